"""Embedded default, VE SDE: a small NCSN++ on scikit-learn's digits (runs anywhere, no download).

    python main.py --mode train --config configs/ve/digits.py --workdir runs/digits_ve
"""
from configs.default_digits_configs import get_default_configs
from configs.default_models import ve_sde


def get_config():
  return ve_sde(get_default_configs(), continuous=True)
