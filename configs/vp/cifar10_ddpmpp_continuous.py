"""DDPM++ (continuous) with the VP SDE on CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ddpmpp, vp_sde


def get_config():
  config = ddpmpp(vp_sde(get_default_configs(), continuous=True))
  config.model.ema_rate = 0.9999
  config.model.embedding_type = 'positional'
  config.model.fourier_scale = 16
  return config
