"""Defaults shared by the CelebA configs (64x64 RGB), as in the paper's reference code.

Every CelebA config starts from `get_default_configs()` and overrides what differs.
"""
from configs import default_configs


def get_default_configs():
  config = default_configs.get_default_configs()
  config.sampling.snr = 0.17
  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True
  config.data.dataset = 'CELEBA'
  config.data.image_size = 64
  config.model.sigma_max = 90.
  return config
