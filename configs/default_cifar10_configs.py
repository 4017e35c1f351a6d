"""Defaults shared by the CIFAR-10 configs (32x32 RGB), as in the paper's reference code.

Every CIFAR-10 config starts from `get_default_configs()` and overrides what differs.
"""
from configs import default_configs


def get_default_configs():
  config = default_configs.get_default_configs()
  config.data.dataset = 'CIFAR10'
  config.data.image_size = 32
  config.model.sigma_max = 50
  return config
