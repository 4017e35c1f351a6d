"""Embedded default, VP SDE: a small DDPM++ on scikit-learn's digits (runs anywhere, no download).

    python main.py --mode train --config configs/vp/digits.py --workdir runs/digits_vp
"""
from configs.default_digits_configs import get_default_configs
from configs.default_models import vp_sde


def get_config():
  config = vp_sde(get_default_configs(), continuous=True)
  config.model.embedding_type = 'positional'
  return config
