"""NCSN++ (continuous), VE SDE, FFHQ 1024x1024 (TFRecords: set data.tfrecords_path).

The CelebA-HQ 1024 model on FFHQ data, trained with reduce_mean as the reference.
"""
from configs.ve import celebahq_ncsnpp_continuous


def get_config():
  config = celebahq_ncsnpp_continuous.get_config()
  config.training.reduce_mean = True
  config.data.dataset = 'FFHQ'
  # Path to the FFHQ 1024x1024 TFRecord file (e.g. ffhq-r10.tfrecords); required.
  config.data.tfrecords_path = ''
  return config
