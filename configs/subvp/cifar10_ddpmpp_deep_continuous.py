"""DDPM++ continuous deep (8 blocks per resolution), sub-VP SDE, CIFAR-10.

The VP model (vp/cifar10_ddpmpp_deep_continuous.py) trained and sampled with the sub-VP SDE.
"""
from configs.vp import cifar10_ddpmpp_deep_continuous


def get_config():
  config = cifar10_ddpmpp_deep_continuous.get_config()
  config.training.sde = 'subvpsde'
  return config
