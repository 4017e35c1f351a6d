"""Embedded default, VE SDE: a small NCSN++ on scikit-learn's digits (runs anywhere, no download).

    python main.py --mode train --config configs/ve/digits.py --workdir runs/digits_ve
"""
from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'

  model = config.model
  model.name = 'ncsnpp'
  model.scale_by_sigma = True
  model.embedding_type = 'fourier'
  return config
