"""Training the time-dependent classifier of class-conditional sampling.

    python main.py --mode train_classifier --config configs/ve/digits_classifier.py --workdir W

Song et al. 2021 (Sec. 5, App. I) sample p_0(x | y) by adding grad_x log p_t(y | x(t)) to the
score; p_t(y | x(t)) is a classifier trained by cross-entropy on data perturbed by the
forward SDE at t ~ U(eps, T), conditioned on the noise level. The network is
`models.wideresnet_noise_conditional` (config.classifier.*), conditioned on VE noise scales:

  * VE SDE: input x(t) = x(0) + sigma(t) z, conditioning sigma(t) (the reference's choice);
  * VP and sub-VP SDEs: x(t) = alpha(t) x(0) + std(t) z is fed as the equivalent VE state
    x(t) / alpha(t) = x(0) + (std(t) / alpha(t)) z with conditioning std(t) / alpha(t), so one
    classifier convention serves every SDE (`classifier_inputs`).

Data are scaled as the score model's (`run.data.get_data_scaler`), so the classifier sees
what the sampler holds. Runs are deterministic and resume exactly as score-model runs: the
batch of step s is a function of (seed, s) and the key of step s is fold_in(key, s). The loop
is the score model's, `run.loop.train_loop`; `classifier.n_jitted_steps` (default 1) fuses steps
as `training.n_jitted_steps` does.

Layout: WORKDIR/classifier/{checkpoints, checkpoints-meta}/<step>/ (a `losses.TrainState`:
params, EMA params, Adam state, step, key) and WORKDIR/classifier/config.json; the workdir
may be the score model's, whose files are not touched.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scoresde_jax import checkpoints, errors, losses, parallel, sde_lib
from scoresde_jax.run import data, loop, networks, programs, setup
from scoresde_jax.run.progress import TrainingProgress

log = logging.getLogger(__name__)

SUBDIR = 'classifier'

# Keys that define a classifier run; of those, these may change when resuming.
_RUN_PREFIXES = ('classifier.', 'data.')
_RUN_KEYS = ('training.sde', 'model.sigma_min', 'model.sigma_max', 'model.beta_min',
             'model.beta_max', 'seed')
_RESUMABLE = ('classifier.n_iters', 'classifier.log_freq', 'classifier.eval_freq',
              'classifier.snapshot_freq', 'classifier.snapshot_freq_for_preemption',
              'classifier.eval_sigmas')


def classifier_dir(workdir: str) -> str:
  return os.path.join(workdir, SUBDIR)


def classifier_inputs(sde: sde_lib.SDE, x, t):
  """The classifier's inputs at time t: (x / alpha(t), std(t) / alpha(t)).

  x: [B, ...] a state of `sde` at times t: [B]. For the VE SDE alpha = 1 and this is
  (x, sigma(t)); for VP / sub-VP it is the equivalent VE state and noise scale.
  """
  alpha, std = sde.marginal_prob(jnp.ones((x.shape[0],), x.dtype), t)
  return sde_lib.batch_mul(1.0 / alpha, x), std / alpha


def get_classifier_loss_fn(sde: sde_lib.SDE, model, eps: float):
  """Cross-entropy of the labels on data perturbed at t ~ U(eps, T).

  `loss_fn(params, batch, rng) -> mean loss`, batch = {'image': [B, H, W, C] scaled data,
  'label': [B] int}.
  """

  def loss_fn(params, batch, rng):
    x, y = batch['image'], batch['label']
    t_rng, z_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, (x.shape[0],), minval=eps, maxval=sde.T)
    mean, std = sde.marginal_prob(x, t)
    xt = mean + sde_lib.batch_mul(std, jax.random.normal(z_rng, x.shape, x.dtype))
    logits = model.apply({'params': params}, *classifier_inputs(sde, xt, t))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  return loss_fn


def create_classifier_state(config, rng=None, abstract: bool = False):
  """(model, optimizer, state): a fresh classifier and its Adam state (float32); with
  `abstract`, the state's shapes only, to restore a checkpoint into (nothing computed)."""
  if rng is None:
    # Its own key, distinct from the score model's PRNGKey(seed).
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  c = config.classifier
  optimizer = losses.get_optimizer(float(c.lr), int(c.warmup), float(c.grad_clip),
                                   weight_decay=float(c.weight_decay))

  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    _, params = networks.init_classifier(init_rng, config)
    return losses.init_train_state(params, optimizer, state_rng)

  state = jax.eval_shape(init, rng) if abstract else init(rng)
  return networks.get_classifier(config), optimizer, state


def check_classifier_config(directory: str, config):
  """Writes the run's classifier config, or refuses a directory holding another one."""
  record = {k: v for k, v in loop.flatten(loop.config_json(config)).items()
            if k.startswith(_RUN_PREFIXES) or k in _RUN_KEYS}
  loop.check_run_config(directory, record, _RESUMABLE, what='classifier')


def schedule(config) -> loop.Schedule:
  c = config.classifier
  return loop.Schedule(int(c.n_iters), int(c.log_freq), int(c.eval_freq), int(c.snapshot_freq),
                       int(c.snapshot_freq_for_preemption), int(c.get('n_jitted_steps', 1)))


def _validate(config, num_devices: int):
  if 'classifier' not in config:
    raise errors.ConfigError('The config has no `classifier` section; use a classifier config '
                             'such as configs/ve/digits_classifier.py.')
  c = config.classifier
  if c.batch_size % num_devices:
    raise errors.ConfigError(f'classifier.batch_size={c.batch_size} is not divisible by the '
                             f'{num_devices} devices.')
  if int(c.n_iters) <= 0:
    raise errors.ConfigError(f'classifier.n_iters={c.n_iters} must be positive.')
  schedule(config).check('classifier')
  setup.get_sde(config)


class Accuracy:
  """Accuracy of a classifier on a whole split, perturbed by VE noise of given scales.

  Compiled once (per network) and kept by the object: build one and call it for every
  evaluation of a run.
  """

  def __init__(self, config, split: str = 'eval'):
    self.model = networks.get_classifier(config)
    scaler = data.get_data_scaler(config)
    self._batches = [(jnp.asarray(scaler(b['image'])), jnp.asarray(b['label']),
                      jnp.asarray(b['mask']))
                     for b in data.get_dataset(config, split, evaluation=True, num_devices=1)]
    self._count = jax.jit(self._correct)

  def _correct(self, params, x, y, mask, sigma, rng):
    """Correct predictions among the masked examples of x + sigma z, conditioned on sigma."""
    xs = x + sigma * jax.random.normal(rng, x.shape, x.dtype)
    logits = self.model.apply({'params': params}, xs, jnp.full((x.shape[0],), sigma, jnp.float32))
    return jnp.sum((jnp.argmax(logits, -1) == y) & mask)

  def __call__(self, params, sigmas, seed: int = 0) -> dict:
    """{sigma: accuracy in [0, 1]}; the noise z of batch i is fixed by (seed, i)."""
    out = {}
    for sigma in sigmas:
      correct = total = 0
      for i, (x, y, mask) in enumerate(self._batches):
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        correct += int(self._count(params, x, y, mask, jnp.float32(sigma), rng))
        total += int(mask.sum())
      out[float(sigma)] = correct / total
    return out


def eval_accuracy(config, params, sigmas, split: str = 'eval', seed: int = 0) -> dict:
  """Accuracy of the classifier on all of `split`, perturbed by VE noise of each scale.

  The clean (scaled) data get sigma * z added (z fixed by `seed`) and the classifier is
  conditioned on sigma; for VP / sub-VP models sigma is the equivalent VE scale
  std / alpha (see `classifier_inputs`). Returns {sigma: accuracy in [0, 1]}.
  """
  return Accuracy(config, split)(params, sigmas, seed)


def train_classifier(config, workdir: str, max_steps: int | None = None,
                     program_dir: str | None = None):
  """Trains (or resumes) the classifier of `config` in WORKDIR/classifier/. Returns its state.

  `max_steps` stops after that many steps of this invocation (tests). `program_dir` keeps the
  compiled step for the next start (`run.programs`).
  """
  mesh = parallel.make_mesh()
  _validate(config, mesh.size)
  c = config.classifier
  directory = classifier_dir(workdir)
  os.makedirs(directory, exist_ok=True)
  check_classifier_config(directory, config)
  replicated = parallel.replicated(mesh)
  steps = schedule(config)

  sde = setup.get_sde(config)
  eps = sde_lib.sampling_eps(sde)
  ckpts = checkpoints.RunCheckpoints(directory)
  resuming = ckpts.latest_step() is not None
  model, optimizer, state = create_classifier_state(config, abstract=resuming)
  if resuming:
    state = ckpts.restore(state)
    log.info('Resuming the classifier from step %d.', int(state.step))
  state = jax.device_put(state, replicated)
  initial_step = int(state.step)

  step_fn = losses.get_multi_step_fn(losses.get_step_fn(
      get_classifier_loss_fn(sde, model, eps), optimizer, float(c.ema_rate)))
  p_train = programs.training_step(step_fn, 'classifier_step', config, mesh, program_dir)
  scaler = data.get_data_scaler(config)
  train_iter = data.get_dataset(config, 'train', start_step=initial_step,
                                batch_size=int(c.batch_size), additional_dim=steps.steps_per_call)
  batch_sharding = parallel.data_sharding(mesh, batch_axis=1)

  def train_step(state):
    batch = next(train_iter)
    return p_train(state, parallel.shard_batch(
        {'image': scaler(batch['image']), 'label': batch['label']}, batch_sharding))

  writer = loop.make_writer(directory)
  progress = TrainingProgress(writer, int(c.n_iters), initial_step,
                              losses.learning_rate_schedule(float(c.lr), int(c.warmup)),
                              prefix='classifier step', loss_name='classifier_loss')
  if initial_step == 0:
    progress.parameter_overview(state.params)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  log.info('Classifier WRN-%d-%d with %s parameters.', c.depth, c.width, f'{num_params:,}')
  accuracy = Accuracy(config)

  def evaluate(state, step):
    acc = accuracy(state.ema_params, tuple(c.eval_sigmas))
    progress.log(f'classifier step {step}: eval accuracy (EMA) '
                 + ', '.join(f'sigma {s:g}: {a:.3f}' for s, a in acc.items()))
    if writer is not None:
      writer.write_scalars(step, {f'eval_accuracy/sigma_{s:g}': a for s, a in acc.items()})

  trainable = loop.Trainable(train_step, evaluate, loss_label='Classifier loss',
                             hint='lower classifier.lr')
  return loop.train_loop(trainable, state, steps, ckpts, progress, initial_step, max_steps,
                         where=directory)


def restore_classifier_params(config, workdir: str, step: int | None = None, ema: bool = True):
  """The (EMA) parameters of the classifier in WORKDIR/classifier at `step` (default: newest)."""
  directory = classifier_dir(workdir)
  if not os.path.isdir(os.path.join(directory, checkpoints.SNAPSHOTS)) and not os.path.isdir(
      os.path.join(directory, checkpoints.PREEMPTION)):
    raise errors.CheckpointNotFoundError(
        f'No classifier checkpoints in {directory!r}; train one with `python main.py --mode '
        f'train_classifier --config ... --workdir {workdir}`.')
  _, _, template = create_classifier_state(config, abstract=True)
  ckpts = checkpoints.RunCheckpoints(directory, asynchronous=False)
  try:
    if ckpts.latest_step() is None:
      raise errors.CheckpointNotFoundError(f'No classifier checkpoints in {directory!r}.')
    state = ckpts.restore(template, step)
  finally:
    ckpts.close()
  return state.ema_params if ema else state.params


@dataclasses.dataclass(frozen=True)
class _LogProb:
  """log p_t(y | x) of a classifier network; compares by value (the SDE and the network do)."""
  sde: sde_lib.SDE
  model: Any

  def __call__(self, params, x, t):
    logits = self.model.apply({'params': params}, *classifier_inputs(self.sde, x, t))
    return jax.nn.log_softmax(logits, axis=-1)


def get_classifier_log_prob_fn(config, workdir_or_params, step: int | None = None):
  """`log_prob_fn(x, t) -> [B, num_classes]` log p_t(y | x) for `conditional_score_fn`.

  Args:
    config: the classifier config (its SDE and `classifier.*`).
    workdir_or_params: a workdir whose classifier/ holds checkpoints (EMA parameters of
      `step`, default the newest), or a parameter tree.
  Returns:
    A `jax.tree_util.Partial` holding the parameters (traced inputs of a compiled sampler).
    Its function compares by value, so every call with equal settings shares one
    compilation. x: [B, H, W, C] states
    of the SDE (scaled as the score model's data), t: [B] times; the result is a log-softmax.
  """
  if isinstance(workdir_or_params, (str, os.PathLike)):
    params = restore_classifier_params(config, os.fspath(workdir_or_params), step)
  else:
    params = workdir_or_params
  return jax.tree_util.Partial(
      _LogProb(setup.get_sde(config), networks.get_classifier(config)), params)
