"""From a config to the objects of a run: the SDE, optimizer, state, loss, score and sampler.

The config boundary: `main.py` and the modules of `run/` are the only code that reads a
ConfigDict; the library takes plain values. This module turns `config.training`,
`config.model` (the SDE's part), `config.optim` and `config.sampling` into library objects;
`run.networks` builds the networks and `run.data` the datasets.

A library constructor's ValueError about a config value becomes an `errors.ConfigError`
naming the config section (`errors.config_errors`), which `main.py` prints as one line.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np

from scoresde_jax import errors, losses, models, samplers, sde_lib
from scoresde_jax.run import networks


def plain(value):
  """Config values (ConfigDicts, tuples, numpy scalars) -> plain Python (JSON-ready)."""
  if isinstance(value, Mapping) or hasattr(value, 'to_dict'):
    items = value.to_dict().items() if hasattr(value, 'to_dict') else value.items()
    return {str(k): plain(v) for k, v in items}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def get_sde(config) -> sde_lib.SDE:
  """The forward SDE named by `config.training.sde`, with `config.model`'s noise scales."""
  name = str(config.training.sde).lower()
  if name not in sde_lib.SDES:
    raise errors.ConfigError(f'Unknown SDE {config.training.sde!r} (config.training.sde); '
                             f'expected one of {sorted(sde_lib.SDES)}.')
  fields = [f.name for f in dataclasses.fields(sde_lib.SDES[name]) if f.name != 'N']
  kwargs = {key: float(config.model[key]) for key in fields}
  with errors.config_errors(where='config.model'):
    return sde_lib.get_sde(name, N=int(config.model.num_scales), **kwargs)


def get_optimizer(config):
  """Adam with the reference's warm-up and clipping, from `config.optim`."""
  optim = config.optim
  if str(optim.optimizer).lower() != 'adam':
    raise errors.ConfigError(f'Unknown optimizer {optim.optimizer!r} (config.optim.optimizer); '
                             'supported: Adam.')
  return losses.get_optimizer(float(optim.lr), int(optim.warmup), float(optim.grad_clip),
                              float(optim.beta1), float(optim.get('beta2', 0.999)),
                              float(optim.eps), float(optim.weight_decay))


def learning_rate_schedule(config):
  return losses.learning_rate_schedule(float(config.optim.lr), int(config.optim.warmup))


def create_train_state(config, rng):
  """Returns (model, optimizer, state) with freshly initialized float32 parameters."""
  init_rng, state_rng = jax.random.split(rng)
  model, params = networks.init_model(init_rng, config)
  optimizer = get_optimizer(config)
  return model, optimizer, losses.init_train_state(params, optimizer, state_rng)


def model_and_template(config):
  """The network and the abstract structure of its TrainState (shapes only: restoring a
  checkpoint needs no freshly initialized parameters, which take long to compute)."""
  model = networks.get_model(config)
  template = jax.eval_shape(lambda rng: create_train_state(config, rng)[2],
                            jax.random.PRNGKey(0))
  return model, template


def get_apply_fn(model, train: bool):
  """`apply_fn(params, x, labels, rng)`: the network's raw output (rng drives dropout)."""

  def apply_fn(params, x, labels, rng):
    return models.get_model_fn(model, params, train=train, rng=rng)(x, labels)

  return apply_fn


def get_loss_fn(config, sde, model, train: bool):
  """The training objective of `config.training` (`loss_fn(params, batch, rng)`)."""
  t = config.training
  with errors.config_errors(where='config.training'):
    return losses.get_loss_fn(sde, get_apply_fn(model, train), continuous=bool(t.continuous),
                              reduce_mean=bool(t.reduce_mean),
                              likelihood_weighting=bool(t.likelihood_weighting),
                              importance_weighting=bool(t.get('importance_weighting', False)))


def get_score_fn(config, sde, model, params):
  """The evaluation-mode score function of `params` (a jit-passable Partial)."""
  return models.get_score_fn(sde, model, params, continuous=bool(config.training.continuous))


# The SamplerSpec fields a config.sampling section or an eval.sweep entry may set.
SAMPLER_KEYS = tuple(f.name for f in dataclasses.fields(samplers.SamplerSpec))


def sampler_spec(config, overrides: Mapping[str, Any] | None = None,
                 where: str = 'config.sampling') -> samplers.SamplerSpec:
  """`config.sampling` as a SamplerSpec, with `overrides` (one eval.sweep entry) on top.

  `num_scales` defaults to `config.model.num_scales`; keys of config.sampling that are not
  spec fields are ignored, unknown keys in `overrides` are refused.
  """
  values = {key: plain(config.sampling[key]) for key in SAMPLER_KEYS if key in config.sampling}
  values.setdefault('num_scales', int(config.model.num_scales))
  overrides = dict(overrides or {})
  unknown = sorted(set(overrides) - set(SAMPLER_KEYS))
  if unknown:
    raise errors.ConfigError(f'{where} has unknown keys {unknown}; allowed: {list(SAMPLER_KEYS)}.')
  values.update(overrides)
  with errors.config_errors(where=where):
    return samplers.SamplerSpec(**values)


def get_sampler(config, shape, sharding=None, overrides: Mapping[str, Any] | None = None,
                trajectory_steps=None, where: str = 'config.sampling') -> samplers.Sampler:
  """The one way from a config to a sampler: `sampler_spec` built for the config's SDE.

  Training snapshots, evaluation sweeps, `--mode sample`, notebooks and benchmarks all call
  this, so their samplers agree on the end time, the NFE and the sharding.
  """
  spec = sampler_spec(config, overrides, where)
  with errors.config_errors(where=where):
    return samplers.build(spec, get_sde(config), shape, sharding, trajectory_steps)
