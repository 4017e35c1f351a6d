"""DDPM U-Net, discrete DDPM objective (VP SDE), LSUN bedroom 256: the CelebA-HQ 256 model."""
from configs.vp.ddpm import celebahq


def get_config():
  config = celebahq.get_config()
  config.data.dataset = 'LSUN'
  config.data.category = 'bedroom'
  return config
