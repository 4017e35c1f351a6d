"""NCSN++ continuous deep (8 blocks per resolution), VP SDE, CIFAR-10."""
from configs.vp import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
