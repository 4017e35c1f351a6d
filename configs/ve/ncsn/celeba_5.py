"""NCSN (v1), 10 noise levels in [0.01, 1], annealed Langevin, CelebA 64x64, plus NCSNv2's EMA.

NCSNv2's technique 5: an exponential moving average (0.999) of the parameters.
"""
from configs.ve.ncsn import celeba


def get_config():
  config = celeba.get_config()
  config.model.ema_rate = 0.999
  return config
