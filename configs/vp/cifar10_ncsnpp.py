"""NCSN++ trained with the discrete DDPM objective (1000 steps), VP SDE, CIFAR-10."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_models import ncsnpp, vp_sde


def get_config():
  config = ncsnpp(vp_sde(get_default_configs(), continuous=False))
  config.sampling.predictor = 'reverse_diffusion'
  config.model.ema_rate = 0.9999
  config.model.embedding_type = 'positional'
  return config
