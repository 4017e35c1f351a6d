"""NCSN++ (continuous), VE SDE, LSUN bedroom 256x256: the CelebA-HQ 256 model on LSUN."""
from configs.ve import celebahq_256_ncsnpp_continuous


def get_config():
  config = celebahq_256_ncsnpp_continuous.get_config()
  config.data.dataset = 'LSUN'
  config.data.category = 'bedroom'
  config.model.sigma_max = 378
  return config
