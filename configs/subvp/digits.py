"""Embedded default, sub-VP SDE: small DDPM++ on scikit-learn's digits (runs anywhere, no download).

    python main.py --mode train --config configs/vp/digits.py --workdir runs/digits_subvp
"""
from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = 'subvpsde'
  training.continuous = True
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'euler_maruyama'
  sampling.corrector = 'none'

  data = config.data
  data.centered = True

  model = config.model
  model.name = 'ncsnpp'
  model.scale_by_sigma = False
  model.embedding_type = 'positional'
  return config
