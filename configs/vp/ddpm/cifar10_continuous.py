"""DDPM U-Net trained in continuous time with the VP SDE, CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ddpm, vp_sde


def get_config():
  config = ddpm(vp_sde(get_default_configs(), continuous=True))
  config.model.ema_rate = 0.9999
  return config
