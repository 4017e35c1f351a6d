"""NCSN++ (continuous), VE SDE, CelebA-HQ 256x256 (TFRecords: set data.tfrecords_path).

The 256x256 NCSN++: 2 blocks per resolution over 7 resolutions (256 down to 4), output and
input skip pyramids; the LSUN configs derive from it.
"""
from configs.default_lsun_configs import get_default_configs
from configs.default_models import ncsnpp, ve_sde


def get_config():
  config = ncsnpp(ve_sde(get_default_configs(), continuous=True))

  data = config.data
  data.dataset = 'CelebAHQ'
  # Path to the CelebA-HQ 256x256 TFRecord file (e.g. ...-r08.tfrecords); required.
  data.tfrecords_path = ''

  model = config.model
  model.sigma_max = 348
  model.ema_rate = 0.999
  model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
  model.num_res_blocks = 2
  model.progressive = 'output_skip'
  model.progressive_input = 'input_skip'
  model.fourier_scale = 16
  return config
