"""Architecture registry and the one place where network outputs become scores.

Networks are Flax linen modules with typed fields (`NCSNpp(nf=128, ch_mult=(1, 2, 2, 2),
...)`) and `__call__(x: [B, H, W, C], labels: [B], train: bool) -> [B, H, W, C]`. Field
names equal the `config.model` keys that set them, so `scoresde_jax.run.networks` builds a
network from a config by name; nothing here reads a config. What the `labels` mean and how
the output relates to the score depends on the SDE and on whether the model was trained
with continuous or discrete time; those conventions (the reference's, so official
checkpoints give the same scores) live in `model_fn_to_score_fn` and nowhere else.

Class-conditional U-Nets (`num_classes` > 0) also take `class_labels`; `get_score_fn` turns
them, with classifier-free guidance (`guided_score`), into a plain `score_fn(x, t)`.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import sde_lib
from scoresde_jax.errors import ArgumentError
from scoresde_jax.models import layers

_MODELS: dict[str, type[nn.Module]] = {}
# Modules whose import registers architectures; imported on the first registry lookup.
_ARCHITECTURE_MODULES = ('ncsnpp', 'ddpm', 'ncsnv2', 'ncsn')

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_choice(field: str, value: str, allowed: Sequence[str]) -> str:
  """`value` lower-cased if it is one of `allowed`; otherwise ArgumentError naming `field`."""
  if not isinstance(value, str) or value.lower() not in allowed:
    raise ArgumentError(field, '{name} must be one of {allowed}, got {value!r}.',
                        allowed=tuple(allowed), value=value)
  return value.lower()


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
  # The architecture modules import this one (for `register_model`), so they are imported
  # here, on first use, rather than at the top.
  for module in _ARCHITECTURE_MODULES:
    importlib.import_module(f'scoresde_jax.models.{module}')


def registered_models() -> list[str]:
  """Names of the registered architectures, sorted."""
  _import_architectures()
  return sorted(_MODELS)


def get_architecture(name: str) -> type[nn.Module]:
  """The network class registered as `name`; ValueError listing the names if there is none."""
  _import_architectures()
  if name not in _MODELS:
    raise ValueError(f'Unknown model name {name!r}; registered: {sorted(_MODELS)}.')
  return _MODELS[name]


def init_params(model: nn.Module, rng: jax.Array, image_shape: Sequence[int],
                batch_size: int = 1) -> dict:
  """float32 parameters of a score network for images of `image_shape` = (H, W, C).

  One compiled program: run eagerly, every initializer of every layer is its own small
  XLA compilation (hundreds, most of the start-up time of a small run on a CPU).
  """
  params_rng, dropout_rng = jax.random.split(rng)
  x = jnp.zeros((batch_size, *image_shape), jnp.float32)
  labels = jnp.zeros((batch_size,), jnp.int32)
  init = jax.jit(lambda rngs, x, labels: model.init(rngs, x, labels, train=False)['params'])
  return init({'params': params_rng, 'dropout': dropout_rng}, x, labels)


def class_count(model) -> int:
  """The classes of a class-conditional network (a U-Net's `num_classes`): 0 for an
  unconditional one and for every other architecture (NCSN's `num_classes` counts noise
  levels, not classes)."""
  return int(model.num_classes) if isinstance(model, layers.UNet) else 0


def get_model_fn(model, params, train: bool = False, rng=None, class_labels=None) -> ModelFn:
  """`model_fn(x, labels)`: the raw network output. `rng` feeds dropout when training.

  `class_labels`: [B] int, given to a class-conditional network (`class_count(model)` > 0;
  the null class `num_classes` stands for no class); None calls the network as before
  (a conditional one then sees the null class).
  """
  kwargs = {} if class_labels is None else {'class_labels': class_labels}

  def model_fn(x, labels):
    if train:
      return model.apply({'params': params}, x, labels, train=True, rngs={'dropout': rng},
                         **kwargs)
    return model.apply({'params': params}, x, labels, train=False, **kwargs)

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


def guided_score(cond_score, uncond_score, guidance_scale):
  """Classifier-free guidance (Ho & Salimans 2022): (1 + w) s(x, t, y) - w s(x, t).

  The score of p_t(x | y)^(1 + w) / p_t(x)^w, i.e. of p_t(x) p_t(y | x)^(1 + w) up to a
  constant: w = 0 is the conditional score, w > 0 sharpens the class. Linear, so it holds
  for noise predictions as well. The one place of the formula: networks (`ScoreFn`) and
  analytic scores (`controllable.guided_score_fn`) use it.
  """
  return (1.0 + guidance_scale) * cond_score - guidance_scale * uncond_score


def cycle_labels(class_labels, batch_size: int):
  """[L] labels -> [batch_size]: example i gets class_labels[i % L] (`get_score_fn`)."""
  class_labels = jnp.asarray(class_labels, jnp.int32).reshape(-1)
  return class_labels[jnp.arange(batch_size) % class_labels.shape[0]]


@dataclasses.dataclass(frozen=True)
class ScoreFn:
  """`score(params, x, t, class_labels=None)` of `model` under `sde`'s convention (see
  `model_fn_to_score_fn`).

  A value: SDEs and networks compare by their fields, so equal (sde, model, continuous,
  guidance_scale) give equal ScoreFns, and a jitted function taking one compiles once for
  all of them (and once per guidance scale). Evaluation mode (no dropout).
  x: [B, H, W, C], t: [B] -> [B, H, W, C]; class_labels: [L] int, cycled over the batch
  (`cycle_labels`), or None: the network without class labels (the null class of a
  class-conditional one). With labels and guidance_scale w != 0, the guided score
  `guided_score` of one network call on the doubled batch ([x, x] with labels [y, null]).
  """
  sde: sde_lib.SDE
  model: nn.Module
  continuous: bool
  guidance_scale: float = 0.0

  def _score(self, params, x, t, class_labels):
    model_fn = get_model_fn(self.model, params, class_labels=class_labels)
    return model_fn_to_score_fn(self.sde, model_fn, self.continuous)(x, t)

  def __call__(self, params, x, t, class_labels=None):
    if class_labels is None:
      return self._score(params, x, t, None)
    batch = x.shape[0]
    labels = cycle_labels(class_labels, batch)
    if not self.guidance_scale:
      return self._score(params, x, t, labels)
    null = jnp.full((batch,), class_count(self.model), jnp.int32)
    both = self._score(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                       jnp.concatenate([labels, null]))
    return guided_score(both[:batch], both[batch:], self.guidance_scale)


def get_score_fn(sde, model, params, continuous: bool, class_labels=None,
                 guidance_scale: float = 0.0) -> jax.tree_util.Partial:
  """`score_fn(x, t)` of a network with parameters `params` (see `model_fn_to_score_fn`).

  A `jax.tree_util.Partial` of a `ScoreFn` holding `params` (and `class_labels`) as its
  arguments: samplers receive them as inputs of their compiled program rather than as
  constants, and the ScoreFn (static, compared by value) makes one compilation serve every
  checkpoint of every equal network.

  Class-conditional networks (`class_count(model)` = K > 0):
    class_labels: an int, or [L] ints in [0, K], cycled over the batch (example i gets
      class_labels[i % L]): B labels as they are, one label for every example, or
      `arange(K)` for balanced classes. K is the null class. None: the null class, the
      unconditional score.
    guidance_scale: w of classifier-free guidance, (1 + w) s(x, t, y) - w s(x, t, null)
      (`guided_score`); 0 is the plain conditional score. Static (one compilation per w).
  """
  num_classes = class_count(model)
  guidance_scale = float(guidance_scale)
  if class_labels is None:
    if guidance_scale:
      raise ArgumentError('guidance_scale', '{name}={value} needs class_labels to guide '
                          'towards.', value=guidance_scale)
    return jax.tree_util.Partial(ScoreFn(sde, model, continuous), params)
  if not num_classes:
    raise ArgumentError('class_labels', '{name} given for an unconditional network '
                        '(num_classes=0).')
  if not isinstance(class_labels, jax.core.Tracer):
    values = np.asarray(class_labels)
    if not np.issubdtype(values.dtype, np.integer) or values.ndim > 1 or values.size == 0:
      raise ArgumentError('class_labels', '{name} must be an int or a non-empty 1-D integer '
                          'array, got {value!r}.', value=class_labels)
    if values.min() < 0 or values.max() > num_classes:
      raise ArgumentError('class_labels', '{name} must lie in [0, {k}] ({k}: the null '
                          'class), got {value!r}.', k=num_classes, value=class_labels)
    class_labels = values.astype(np.int32).reshape(-1)
  return jax.tree_util.Partial(ScoreFn(sde, model, continuous, guidance_scale), params,
                               class_labels=class_labels)
