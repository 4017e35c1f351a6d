"""From `config.model` (and `config.data`, `config.classifier`) to networks.

The config boundary for networks: the library's modules take typed fields; this module
reads the ConfigDict and passes them.
"""
from __future__ import annotations

from scoresde_jax import models
from scoresde_jax.models import wideresnet_noise_conditional as wrn


def get_model(config):
  """The score network of `config.model.name`, configured by the config."""
  return models.get_model(config)


def init_model(rng, config, batch_size: int = 1):
  """The score network and its float32 parameters: (model, params)."""
  return models.init_model(rng, config, batch_size)


def get_classifier(config):
  """The noise-conditional classifier of `config.classifier`."""
  return wrn.get_classifier(config)


def init_classifier(rng, config, batch_size: int = 1):
  """The classifier and its float32 parameters: (model, params)."""
  return wrn.init_classifier(rng, config, batch_size)
