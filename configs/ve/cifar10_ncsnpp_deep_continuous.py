"""NCSN++ continuous deep (8 blocks per resolution), VE SDE, CIFAR-10 (paper: FID 2.20, IS 9.89)."""
from configs.ve import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
