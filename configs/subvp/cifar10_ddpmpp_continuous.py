"""DDPM++ (continuous) with the sub-VP SDE on CIFAR-10.

The VP model (vp/cifar10_ddpmpp_continuous.py) trained and sampled with the sub-VP SDE.
"""
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
  config = cifar10_ddpmpp_continuous.get_config()
  config.training.sde = 'subvpsde'
  return config
