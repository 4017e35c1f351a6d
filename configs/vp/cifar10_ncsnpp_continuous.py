"""NCSN++ (continuous) with the VP SDE on CIFAR-10.

The DDPM++ model (vp/cifar10_ddpmpp_continuous.py) with NCSN++'s FIR resampling and residual
input pyramid.
"""
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
  config = cifar10_ddpmpp_continuous.get_config()
  config.model.fir = True
  config.model.progressive_input = 'residual'
  return config
