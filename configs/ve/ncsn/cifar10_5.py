"""NCSN (v1), 10 noise levels in [0.01, 1], annealed Langevin, CIFAR-10, plus NCSNv2's EMA.

NCSNv2's technique 5: an exponential moving average (0.999) of the parameters.
"""
from configs.ve.ncsn import cifar10


def get_config():
  config = cifar10.get_config()
  config.model.ema_rate = 0.999
  return config
