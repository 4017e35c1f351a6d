"""DDPM++ trained with the discrete DDPM objective (1000 steps), VP SDE, CIFAR-10.

The continuous model (vp/cifar10_ddpmpp_continuous.py) on DDPM's discrete objective, sampled
by DDPM's ancestral sampling.
"""
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
  config = cifar10_ddpmpp_continuous.get_config()
  config.training.continuous = False
  config.sampling.predictor = 'ancestral_sampling'
  return config
