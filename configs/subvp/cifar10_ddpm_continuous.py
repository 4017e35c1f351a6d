"""DDPM U-Net trained in continuous time with the sub-VP SDE, CIFAR-10.

The VP model (vp/ddpm/cifar10_continuous.py) trained and sampled with the sub-VP SDE.
"""
from configs.vp.ddpm import cifar10_continuous


def get_config():
  config = cifar10_continuous.get_config()
  config.training.sde = 'subvpsde'
  return config
