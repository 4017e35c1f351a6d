"""NCSN++ (continuous), VE SDE, FFHQ 256x256 (TFRecords: set data.tfrecords_path).

The CelebA-HQ 256 model on FFHQ data.
"""
from configs.ve import celebahq_256_ncsnpp_continuous


def get_config():
  config = celebahq_256_ncsnpp_continuous.get_config()
  config.data.dataset = 'FFHQ'
  # Path to the FFHQ 256x256 TFRecord file (e.g. ...-r08.tfrecords); required.
  config.data.tfrecords_path = ''
  return config
