"""NCSN (v1) network with NCSNv2's noise schedule and EMA 0.999, CelebA 64x64."""
from configs.ve.ncsn import celeba_124


def get_config():
  config = celeba_124.get_config()
  config.model.ema_rate = 0.999
  return config
