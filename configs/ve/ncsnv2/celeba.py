"""NCSNv2 (Song & Ermon 2020), 500 noise levels in [0.01, 90], annealed Langevin, CelebA 64x64."""
from configs.default_celeba_configs import get_default_configs
from configs.default_models import ncsnv2


def get_config():
  return ncsnv2(get_default_configs(), name='ncsnv2_64', num_scales=500, n_steps_each=5,
                snr=0.128)
