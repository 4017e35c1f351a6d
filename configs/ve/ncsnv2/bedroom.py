"""NCSNv2, 128px network, 1086 noise levels in [0.01, 190], Langevin, LSUN bedroom 128x128.

The reference misspelled `training.continuous` here ('continuouse'), so its run silently
kept the default continuous=True; this config sets the intended discrete training.
"""
from configs.default_lsun_configs import get_default_configs
from configs.default_models import ncsnv2


def get_config():
  config = ncsnv2(get_default_configs(), name='ncsnv2_128', num_scales=1086, n_steps_each=3,
                  snr=0.095)
  config.training.batch_size = 128
  config.data.category = 'bedroom'
  config.data.image_size = 128
  config.model.sigma_max = 190
  config.model.ema_rate = 0.9999
  return config
