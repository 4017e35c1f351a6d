"""From a config to the objects of a run: SDE, network, optimizer, state, score function.

The only place (with main.py) where library pieces are built from config values.
"""
from __future__ import annotations

import jax

from scoresde_jax import losses, models, sde_lib


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def get_sde(config):
  """The forward SDE of `config.training.sde` and the paper's sampling eps for it."""
  name = config.training.sde.lower()
  model = config.model
  if name == 'vesde':
    return sde_lib.VESDE(float(model.sigma_min), float(model.sigma_max), int(model.num_scales)), 1e-5
  if name == 'vpsde':
    return sde_lib.VPSDE(float(model.beta_min), float(model.beta_max), int(model.num_scales)), 1e-3
  if name == 'subvpsde':
    return sde_lib.subVPSDE(float(model.beta_min), float(model.beta_max), int(model.num_scales)), 1e-3
  raise ConfigError(f'Unknown SDE {config.training.sde!r} (config.training.sde); '
                    "expected 'vesde', 'vpsde' or 'subvpsde'.")


def get_apply_fn(model, train: bool):
  """`apply_fn(params, x, labels, rng)`: the network's raw output (rng drives dropout)."""

  def apply_fn(params, x, labels, rng):
    if train:
      return model.apply({'params': params}, x, labels, train=True, rngs={'dropout': rng})
    return model.apply({'params': params}, x, labels, train=False)

  return apply_fn


def create_train_state(config, rng):
  """Returns (model, optimizer, state) with freshly initialized float32 parameters."""
  init_rng, state_rng = jax.random.split(rng)
  model, params = models.init_model(init_rng, config)
  optimizer = losses.optimizer_from_config(config)
  return model, optimizer, losses.init_train_state(params, optimizer, state_rng)


def get_loss_fn(config, sde, model, train: bool):
  return losses.get_loss_fn(sde, get_apply_fn(model, train),
                            continuous=config.training.continuous,
                            reduce_mean=config.training.reduce_mean,
                            likelihood_weighting=config.training.likelihood_weighting)


def get_score_fn(config, sde, model, params):
  """The evaluation-mode score function of `params` (a jit-passable Partial)."""
  return models.get_score_fn(sde, model, params, continuous=config.training.continuous)
