"""NCSN++ trained with the discrete SMLD objective, VE SDE, CelebA 64x64."""
from configs.default_celeba_configs import get_default_configs
from configs.default_models import ncsnpp, ve_sde


def get_config():
  config = ncsnpp(ve_sde(get_default_configs(), continuous=False))
  config.model.sigma_begin = 90
  config.model.ema_rate = 0.999
  config.model.embedding_type = 'positional'
  return config
