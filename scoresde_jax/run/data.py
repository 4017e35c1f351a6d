"""From `config.data` (and the batch sizes of `config.training` / `config.eval`) to datasets.

The config boundary for data: `datasets` takes a `DataSpec` and plain arguments; this module
reads the ConfigDict, and turns the library's `errors.ArgumentError`s about values that come
from the config into `errors.ConfigError`s naming the key (e.g. `data.image_size`,
`training.batch_size`); those about values the caller passed stay as they are.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

from scoresde_jax import datasets, errors

# None is a value of additional_dim (no fused-steps axis), so "not given" needs its own marker.
_FROM_CONFIG = object()
_SPEC_KEYS = {field.name: f'data.{field.name}' for field in dataclasses.fields(datasets.DataSpec)}


def data_spec(config) -> datasets.DataSpec:
  """The `DataSpec` of `config.data`.

  Raises:
    ConfigError: a `config.data` value no dataset reader accepts (the message names the key).
  """
  data = config.data
  with errors.config_errors(_SPEC_KEYS):
    return datasets.DataSpec(
        dataset=data.dataset, image_size=data.image_size, num_channels=data.num_channels,
        centered=data.centered, random_flip=data.random_flip,
        uniform_dequantization=data.uniform_dequantization,
        # Optional keys; '' (the configs' default) means unset.
        data_dir=data.get('data_dir', None) or None,
        tfrecords_path=data.get('tfrecords_path', '') or '',
        category=data.get('category', None) or None,
        path=data.get('path', '') or '', upscale=bool(data.get('upscale', False)))


def get_dataset(config, split: str = 'train', *, evaluation: bool = False,
                seed: Optional[int] = None, batch_size: Optional[int] = None,
                additional_dim=_FROM_CONFIG, data_dir: Optional[str] = None,
                **kwargs) -> Iterator[datasets.Batch]:
  """This host's numpy batches of `config.data.dataset` (see `datasets.get_dataset`).

  Args:
    config: the run's config (reads data.*, training.batch_size, eval.batch_size,
      training.n_jitted_steps, seed).
    split: 'train' or 'eval'.
    evaluation: one pass of batches of eval.batch_size; otherwise an endless stream of batches
      of training.batch_size.
    seed: default config.seed.
    batch_size: global batch size overriding the config's.
    additional_dim: fused steps per element; default training.n_jitted_steps for training
      streams and none for `evaluation`; None: no axis.
    data_dir: tfds data directory overriding data.data_dir.
    **kwargs: the other arguments of `datasets.get_dataset` (start_step,
      uniform_dequantization, download, num_devices, process_index, process_count,
      shuffle_buffer_size).

  Raises:
    ConfigError: a config value that cannot work (the message names the key).
    DatasetNotFoundError: the dataset is not prepared on this machine.
  """
  spec = data_spec(config)
  if data_dir is not None:
    spec = dataclasses.replace(spec, data_dir=data_dir)
  keys = dict(_SPEC_KEYS)
  if batch_size is None:
    keys['batch_size'] = 'eval.batch_size' if evaluation else 'training.batch_size'
    batch_size = config.eval.batch_size if evaluation else config.training.batch_size
  if additional_dim is _FROM_CONFIG:
    keys['additional_dim'] = 'training.n_jitted_steps'
    additional_dim = None if evaluation else config.training.n_jitted_steps
  with errors.config_errors(keys):
    return datasets.get_dataset(
        spec, split, batch_size=batch_size, seed=config.seed if seed is None else seed,
        evaluation=evaluation, additional_dim=additional_dim, **kwargs)


def get_data_scaler(config) -> Callable:
  """[0, 1] -> the model's range, by `config.data.centered` (see `datasets.get_data_scaler`)."""
  return datasets.get_data_scaler(config.data.centered)


def get_data_inverse_scaler(config) -> Callable:
  """The model's range -> [0, 1], by `config.data.centered`."""
  return datasets.get_data_inverse_scaler(config.data.centered)
