"""NCSN (v1) network with NCSNv2's noise schedule and EMA 0.999, CIFAR-10."""
from configs.ve.ncsn import cifar10_124


def get_config():
  config = cifar10_124.get_config()
  config.model.ema_rate = 0.999
  return config
