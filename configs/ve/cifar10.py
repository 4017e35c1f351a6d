"""Short name for the paper's headline VE model: NCSN++ continuous deep on CIFAR-10."""
from configs.ve import cifar10_ncsnpp_deep_continuous


def get_config():
  return cifar10_ncsnpp_deep_continuous.get_config()
