"""NCSN++ (continuous), VE SDE, CelebA-HQ 1024x1024 (TFRecords: set data.tfrecords_path).

The 256x256 model (ve/celebahq_256_ncsnpp_continuous.py) widened to 8 resolutions (1024 down
to 8) with 1 block each, channels 16 to 512. The reference wrote this config from scratch,
without the defaults and without most eval keys; here it keeps every default key.
"""
from configs.ve import celebahq_256_ncsnpp_continuous


def get_config():
  config = celebahq_256_ncsnpp_continuous.get_config()
  config.training.batch_size = 8
  config.sampling.snr = 0.15

  evaluate = config.eval
  evaluate.batch_size = 1024
  evaluate.begin_ckpt = 1

  config.data.image_size = 1024
  # Path to the CelebA-HQ 1024x1024 TFRecord file (e.g. ...-r10.tfrecords); required.
  config.data.tfrecords_path = ''

  model = config.model
  model.sigma_max = 1348
  model.ema_rate = 0.9999
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1

  config.optim.amsgrad = False
  return config
