"""From a config to the objects of a run: the SDE, optimizer, state, loss, score and sampler.

The config boundary: `main.py` and the modules of `run/` are the only code that reads a
ConfigDict; the library takes plain values. This module turns `config.training`,
`config.model` (the SDE's part), `config.optim` and `config.sampling` into library objects;
`run.networks` builds the networks and `run.data` the datasets. Class conditioning
(`config.model.num_classes` > 0): the objective's batches (`get_batch_fn`), label dropout,
and the classes and guidance scale of sampling (`class_guidance`).

A library constructor's ValueError about a config value becomes an `errors.ConfigError`
naming the config section (`errors.config_errors`), which `main.py` prints as one line.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np

from scoresde_jax import errors, losses, models, samplers, sde_lib
from scoresde_jax.run import data, networks


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
                              float(optim.eps), float(optim.weight_decay), _decay_steps(config))


def _decay_steps(config) -> int:
  """optim.cosine_decay: the rate reaches 0 at the run's last step, training.n_iters."""
  return int(config.training.n_iters) if config.optim.get('cosine_decay', False) else 0


def learning_rate_schedule(config):
  return losses.learning_rate_schedule(float(config.optim.lr), int(config.optim.warmup),
                                       _decay_steps(config))


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


def class_count(config) -> int:
  """The classes of the config's network: config.model.num_classes for a U-Net (ncsnpp,
  ddpm), 0 for an unconditional network (and for NCSN, whose num_classes counts noise
  levels)."""
  return models.class_count(networks.get_model(config))


def get_apply_fn(model, train: bool):
  """`apply_fn(params, x, labels, rng, class_labels=None)`: the network's raw output (rng
  drives dropout; class_labels condition a class-conditional network)."""

  def apply_fn(params, x, labels, rng, class_labels=None):
    return models.get_model_fn(model, params, train=train, rng=rng,
                               class_labels=class_labels)(x, labels)

  return apply_fn


def label_dropout(config, model, train: bool) -> float:
  """`config.training.label_dropout` (default 0.1) for training a class-conditional
  network; 0 for an unconditional one and for evaluation (labels as they are)."""
  if not (train and models.class_count(model)):
    return 0.0
  rate = float(config.training.get('label_dropout', 0.1))
  if not 0.0 <= rate <= 1.0:
    raise errors.ConfigError(f'config.training.label_dropout={rate} must lie in [0, 1] (the '
                             'probability that a label becomes the null class).')
  return rate


def get_loss_fn(config, sde, model, train: bool):
  """The training objective of `config.training` (`loss_fn(params, batch, rng)`); that of
  a class-conditional network takes {'image', 'label'} batches (`get_batch_fn`)."""
  t = config.training
  with errors.config_errors(where='config.training'):
    return losses.get_loss_fn(sde, get_apply_fn(model, train), continuous=bool(t.continuous),
                              reduce_mean=bool(t.reduce_mean),
                              likelihood_weighting=bool(t.likelihood_weighting),
                              importance_weighting=bool(t.get('importance_weighting', False)),
                              num_classes=models.class_count(model),
                              label_dropout=label_dropout(config, model, train))


def check_labels(config, labels, num_classes: int):
  """ConfigError unless every label of a batch is a class of the network, [0, num_classes)."""
  labels = np.asarray(labels)
  if not labels.size:
    return
  dataset = config.data.dataset
  if labels.min() < 0:
    raise errors.ConfigError(
        f'config.model.num_classes={num_classes} trains a class-conditional model, but '
        f'{dataset} has no class labels (label -1); use a labelled dataset or '
        'config.model.num_classes=0.')
  if labels.max() >= num_classes:
    raise errors.ConfigError(
        f'{dataset} has class label {int(labels.max())}, outside the '
        f'config.model.num_classes={num_classes} classes; set config.model.num_classes to at '
        f'least {int(labels.max()) + 1}.')


def get_batch_fn(config, model):
  """`batch_fn(host_batch) -> what the objective takes`: the scaled images, or for a
  class-conditional network {'image': scaled images, 'label'} (labels checked, `check_labels`)."""
  scaler = data.get_data_scaler(config)
  num_classes = models.class_count(model)

  def batch_fn(batch):
    if not num_classes:
      return scaler(batch['image'])
    check_labels(config, batch['label'], num_classes)
    return {'image': scaler(batch['image']), 'label': np.asarray(batch['label'], np.int32)}

  return batch_fn


def class_guidance(config, model, class_labels=None, guidance_scale=None):
  """(class labels, guidance scale) that sampling conditions on.

  `class_labels`: as `models.get_score_fn` takes them (an int, or ints cycled over the
  batch); default `config.sampling.class_label`: -1 (the default) balanced classes, sample
  i of a batch class i % num_classes, k >= 0 every sample class k. `guidance_scale`: default
  `config.sampling.guidance_scale` (0: none). An unconditional network gets (None, 0.);
  ConfigError if it is asked for a class or guidance.
  """
  num_classes = models.class_count(model)
  sampling = config.sampling
  if guidance_scale is None:
    guidance_scale = float(sampling.get('guidance_scale', 0.0))
  label = int(sampling.get('class_label', -1))
  if not num_classes:
    if guidance_scale or class_labels is not None or label >= 0:
      raise errors.ConfigError(
          'Class labels and classifier-free guidance (config.sampling.class_label, '
          'config.sampling.guidance_scale) need a class-conditional model '
          '(config.model.num_classes > 0 with model.name ncsnpp or ddpm).')
    return None, 0.0
  if class_labels is None:
    if not -1 <= label < num_classes:
      raise errors.ConfigError(f'config.sampling.class_label={label} must be -1 (balanced '
                               f'classes) or a class in [0, {num_classes}).')
    class_labels = np.arange(num_classes) if label == -1 else np.array([label])
  return class_labels, guidance_scale


def get_score_fn(config, sde, model, params, class_labels=None, guidance_scale=None,
                 unconditional: bool = False):
  """The evaluation-mode score function of `params` (a jit-passable Partial).

  A class-conditional network's is guided towards the classes of `class_guidance`
  (`class_labels`, `guidance_scale` override config.sampling's); with `unconditional`,
  it is the null class's score instead, that of p_t(x) (what likelihoods measure).
  """
  if unconditional:
    class_labels, guidance_scale = None, 0.0
  else:
    class_labels, guidance_scale = class_guidance(config, model, class_labels, guidance_scale)
  # Config values were checked above; an ArgumentError here is about the caller's arguments.
  return models.get_score_fn(sde, model, params, continuous=bool(config.training.continuous),
                             class_labels=class_labels, guidance_scale=guidance_scale)


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
