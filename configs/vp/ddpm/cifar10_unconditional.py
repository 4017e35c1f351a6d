"""DDPM U-Net without time input, discrete DDPM objective (VP SDE), CIFAR-10."""
from configs.vp.ddpm import cifar10


def get_config():
  config = cifar10.get_config()
  config.model.conditional = False
  return config
