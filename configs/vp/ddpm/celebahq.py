"""DDPM U-Net, discrete DDPM objective (VP SDE), CelebA-HQ 256 (TFRecords).

DDPM's 256x256 U-Net: 6 resolutions (256 down to 8), channels 128 to 512; trained with a
learning rate of 2e-5. The LSUN configs derive from it.
"""
from configs.default_lsun_configs import get_default_configs
from configs.default_models import ddpm, vp_sde


def get_config():
  config = ddpm(vp_sde(get_default_configs(), continuous=False))
  config.data.dataset = 'CelebAHQ'
  # Path to the CelebA-HQ 256x256 TFRecord file; required.
  config.data.tfrecords_path = ''

  model = config.model
  model.num_scales = 1000
  model.ema_rate = 0.9999
  model.ch_mult = (1, 1, 2, 2, 4, 4)

  config.optim.lr = 2e-5
  return config
