"""DDPM's U-Net trained with the discrete SMLD objective (VE SDE) on CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ddpm, ve_sde


def get_config():
  config = ddpm(ve_sde(get_default_configs(), continuous=False))
  config.model.ema_rate = 0.999
  config.model.conv_size = 3
  return config
