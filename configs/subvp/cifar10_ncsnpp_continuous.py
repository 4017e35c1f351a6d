"""NCSN++ (continuous) with the sub-VP SDE on CIFAR-10.

The VP model (vp/cifar10_ncsnpp_continuous.py) trained and sampled with the sub-VP SDE.
"""
from configs.vp import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.sde = 'subvpsde'
  return config
