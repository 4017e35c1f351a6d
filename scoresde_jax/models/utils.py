"""Model registry and the one place where network outputs become scores.

Networks are Flax linen modules built from a config (`Module(config=config)`) with
`__call__(x: [B, H, W, C], labels: [B], train: bool) -> [B, H, W, C]`. What the
`labels` mean and how the output relates to the score depends on the SDE and on
whether the model was trained with continuous or discrete time; those conventions
(the reference's, so official checkpoints give the same scores) live in
`model_fn_to_score_fn` and nowhere else.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

from scoresde_jax import sde_lib

_MODELS: dict[str, type] = {}
# Modules whose import registers architectures; imported lazily by `get_model`.
_ARCHITECTURE_MODULES = ('ncsnpp', 'ddpm', 'ncsnv2', 'ncsn', 'toy')

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def register_model(cls=None, *, name: str | None = None):
  """Class decorator registering a network under `name` (default: the class name)."""

  def _register(cls):
    key = name or cls.__name__
    if key in _MODELS and _MODELS[key] is not cls:
      raise ValueError(f'A model is already registered as {key!r}.')
    _MODELS[key] = cls
    return cls

  return _register if cls is None else _register(cls)


def _import_architectures():
  for module in _ARCHITECTURE_MODULES:
    try:
      importlib.import_module(f'scoresde_jax.models.{module}')
    except ModuleNotFoundError as e:
      if e.name != f'scoresde_jax.models.{module}':
        raise


def registered_models() -> list[str]:
  _import_architectures()
  return sorted(_MODELS)


def get_model(config):
  """The network named by `config.model.name`, configured by `config`."""
  _import_architectures()
  name = config.model.name
  if name not in _MODELS:
    raise ValueError(f'Unknown model name {name!r} (config.model.name); '
                     f'registered: {sorted(_MODELS)}.')
  return _MODELS[name](config=config)


def init_model(rng, config, batch_size: int = 1):
  """Builds the network and its float32 parameters. Returns (model, params)."""
  model = get_model(config)
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng},
                         jnp.zeros(shape, jnp.float32), jnp.zeros((batch_size,), jnp.int32),
                         train=False)
  return model, variables['params']


def get_model_fn(model, params, train: bool = False, rng=None) -> ModelFn:
  """`model_fn(x, labels)`: the raw network output. `rng` feeds dropout when training."""

  def model_fn(x, labels):
    if train:
      return model.apply({'params': params}, x, labels, train=True, rngs={'dropout': rng})
    return model.apply({'params': params}, x, labels, train=False)

  return model_fn


def model_fn_to_score_fn(sde: sde_lib.SDE, model_fn: ModelFn, continuous: bool):
  """Turns a raw network `model_fn(x, labels)` into `score_fn(x, t)`, t: [B] in [0, T].

  Conventions (those of the reference implementation and its checkpoints):
    * VP and sub-VP: the network predicts the noise epsilon; score = -output / std.
      Continuous-time models (and every sub-VP model) see labels t * 999 and std is the
      SDE's marginal std; discrete DDPM models see the integer step t * (N - 1) and std
      is DDPM's sqrt(1 - alphas_cumprod) at that step.
    * VE: the network output is the score itself (NCSN++ divides by sigma inside when
      `scale_by_sigma`). Continuous-time models see labels sigma(t); discrete SMLD
      models see the noise-level index round((T - t) * (N - 1)), 0 = largest sigma.
  """
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):

    def score_fn(x, t):
      if continuous or isinstance(sde, sde_lib.subVPSDE):
        labels = t * 999
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = t * (sde.N - 1)
        std = sde.sqrt_1m_alphas_cumprod[labels.astype(jnp.int32)]
      return sde_lib.batch_mul(-1.0 / std, model_fn(x, labels))

  elif isinstance(sde, sde_lib.VESDE):

    def score_fn(x, t):
      if continuous:
        labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
      return model_fn(x, labels)

  else:
    raise NotImplementedError(f'No score convention for SDE {type(sde).__name__}.')
  return score_fn


_SCORE_CALLABLES: dict = {}


def get_score_fn(sde, model, params, continuous: bool):
  """`score_fn(x, t)` of a network with parameters `params` (see `model_fn_to_score_fn`).

  Evaluation mode (no dropout). The result is a `jax.tree_util.Partial` holding `params` as
  its argument, so samplers receive the parameters as inputs of their compiled program
  rather than as constants, and one compilation serves every checkpoint of a model.
  """
  key = (sde, id(model), continuous)
  if key not in _SCORE_CALLABLES:

    def score(params, x, t):
      return model_fn_to_score_fn(sde, get_model_fn(model, params), continuous)(x, t)

    _SCORE_CALLABLES[key] = (model, score)  # holding the model keeps its id unique
  return jax.tree_util.Partial(_SCORE_CALLABLES[key][1], params)
