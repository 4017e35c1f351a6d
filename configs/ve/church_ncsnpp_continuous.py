"""NCSN++ (continuous), VE SDE, LSUN church_outdoor 256x256: the bedroom model on churches."""
from configs.ve import bedroom_ncsnpp_continuous


def get_config():
  config = bedroom_ncsnpp_continuous.get_config()
  config.data.category = 'church_outdoor'
  config.model.sigma_max = 380
  return config
