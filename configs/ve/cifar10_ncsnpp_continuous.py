"""NCSN++ (continuous) with the VE SDE on CIFAR-10 (paper: FID 2.38).

The discrete model (ve/cifar10_ncsnpp.py) trained in continuous time, which embeds sigma
by random Fourier features.
"""
from configs.ve import cifar10_ncsnpp


def get_config():
  config = cifar10_ncsnpp.get_config()
  config.training.continuous = True
  config.model.embedding_type = 'fourier'
  config.model.fourier_scale = 16
  return config
