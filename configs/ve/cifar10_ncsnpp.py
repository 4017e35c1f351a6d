"""NCSN++ trained with the discrete SMLD objective (1000 noise levels), VE SDE, CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ncsnpp, ve_sde


def get_config():
  config = ncsnpp(ve_sde(get_default_configs(), continuous=False))
  config.model.ema_rate = 0.999
  config.model.embedding_type = 'positional'
  return config
