"""Embedded default, sub-VP SDE: small DDPM++ on scikit-learn's digits (runs anywhere, no download).

    python main.py --mode train --config configs/subvp/digits.py --workdir runs/digits_subvp
"""
from configs.vp import digits


def get_config():
  config = digits.get_config()
  config.training.sde = 'subvpsde'
  return config
