"""DDPM U-Net, discrete DDPM objective (VP SDE), CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ddpm, vp_sde


def get_config():
  config = ddpm(vp_sde(get_default_configs(), continuous=False))
  config.model.ema_rate = 0.9999
  return config
