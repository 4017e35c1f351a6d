"""NCSN (v1) network with NCSNv2's noise schedule (232 levels, sigma_max 50), CIFAR-10.

NCSNv2's techniques 1 (sigma_max: the dataset's default), 2 (number of noise levels) and 4
(Langevin steps and step size).
"""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ncsn


def get_config():
  return ncsn(get_default_configs(), num_scales=232, n_steps_each=5, snr=0.176)
