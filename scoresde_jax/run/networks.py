"""From `config.model` (and `config.data`, `config.classifier`) to networks.

The config boundary for networks: the library's modules take typed fields named as the
config keys that set them; this module reads those keys and passes them by name. A field
takes `config.model.<field>` (`centered`: config.data.centered; classifier fields:
`config.classifier.<field>`), or the field's default when the key is absent.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from scoresde_jax import errors, models
from scoresde_jax.models import wideresnet_noise_conditional as wrn

# Network fields set by config.data rather than by the network's own section.
_DATA_FIELDS = ('centered',)
# Fields of every Flax module, not network settings.
_FLAX_FIELDS = ('parent', 'name')


def _key(field: str, section: str) -> str:
  return f'config.data.{field}' if field in _DATA_FIELDS else f'config.{section}.{field}'


def _config_errors(cls, section: str):
  """A network's field errors name the config key of the field; its other ValueErrors are
  about the input shape, which comes from config.data.image_size."""
  keys = {f.name: _key(f.name, section) for f in dataclasses.fields(cls)}
  return errors.config_errors(keys, where='config.data.image_size')


def _build(cls, config, section: str):
  """`cls` with each field from the config (see the module docstring)."""
  kwargs = {}
  for field in dataclasses.fields(cls):
    if field.name in _FLAX_FIELDS or not field.init:
      continue
    source = config.data if field.name in _DATA_FIELDS else config[section]
    if field.name in source:
      value = source[field.name]
      # Networks are compared and hashed by their fields (jit caches on them): no lists.
      kwargs[field.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
      raise errors.ConfigError(f'{_key(field.name, section)} is required by '
                               f'{cls.__name__}.')
  with _config_errors(cls, section):
    return cls(**kwargs)


def _image_shape(config) -> tuple[int, int, int]:
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def get_model(config):
  """The score network of `config.model.name`, its fields from `config.model`."""
  try:
    cls = models.get_architecture(config.model.name)
  except ValueError as e:
    raise errors.ConfigError(f'Unknown model name {config.model.name!r} (config.model.name); '
                             f'registered: {models.registered_models()}.') from e
  return _build(cls, config, 'model')


def init_model(rng, config, batch_size: int = 1):
  """The score network and its float32 parameters for config.data's images: (model, params)."""
  model = get_model(config)
  with _config_errors(type(model), 'model'):
    params = models.init_params(model, rng, _image_shape(config), batch_size)
  return model, params


def get_classifier(config) -> wrn.WideResNetNoiseConditional:
  """The noise-conditional classifier, its fields from `config.classifier`."""
  if 'classifier' not in config:
    raise errors.ConfigError('The config has no `classifier` section; use a classifier config '
                             'such as configs/ve/digits_classifier.py.')
  return _build(wrn.WideResNetNoiseConditional, config, 'classifier')


def init_classifier(rng, config, batch_size: int = 1):
  """The classifier and its float32 parameters for config.data's images: (model, params)."""
  model = get_classifier(config)
  x = jnp.zeros((batch_size, *_image_shape(config)), jnp.float32)
  with _config_errors(type(model), 'classifier'):
    # One compilation instead of one per operation of the network.
    variables = jax.jit(model.init)(rng, x, jnp.ones((batch_size,), jnp.float32))
  return model, variables['params']
