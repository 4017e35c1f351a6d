"""Short name for the paper's headline VP model: DDPM++ continuous deep on CIFAR-10."""
from configs.vp import cifar10_ddpmpp_deep_continuous


def get_config():
  return cifar10_ddpmpp_deep_continuous.get_config()
