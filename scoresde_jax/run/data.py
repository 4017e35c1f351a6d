"""From `config.data` (and the batch sizes of `config.training` / `config.eval`) to datasets.

The config boundary for data: `datasets` takes a plain spec; this module reads the
ConfigDict and builds it.
"""
from __future__ import annotations

from scoresde_jax import datasets


def get_dataset(config, split: str = 'train', **kwargs):
  """This host's numpy batches of `config.data.dataset` (see `datasets.get_dataset`)."""
  return datasets.get_dataset(config, split, **kwargs)


def get_data_scaler(config):
  return datasets.get_data_scaler(config)


def get_data_inverse_scaler(config):
  return datasets.get_data_inverse_scaler(config)
