"""NCSN (v1, Song & Ermon 2019), 10 noise levels in [0.01, 1], annealed Langevin, CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ncsn


def get_config():
  config = ncsn(get_default_configs(), num_scales=10, n_steps_each=100, snr=0.316)
  config.model.sigma_max = 1
  return config
