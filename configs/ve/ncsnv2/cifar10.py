"""NCSNv2 (Song & Ermon 2020), 232 noise levels in [0.01, 50], annealed Langevin, CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ncsnv2


def get_config():
  return ncsnv2(get_default_configs(), name='ncsnv2_64', num_scales=232, n_steps_each=5,
                snr=0.176)
