"""DDPM U-Net, discrete DDPM objective (VP SDE), LSUN church_outdoor 256: the bedroom model."""
from configs.vp.ddpm import bedroom


def get_config():
  config = bedroom.get_config()
  config.data.category = 'church_outdoor'
  return config
