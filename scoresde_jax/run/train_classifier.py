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

Data are scaled as the score model's (`datasets.get_data_scaler`), so the classifier sees
what the sampler holds. Runs are deterministic and resume exactly as score-model runs: the
batch of step s is a function of (seed, s) and the key of step s is fold_in(key, s).

Layout: WORKDIR/classifier/{checkpoints, checkpoints-meta}/<step>/ (a `losses.TrainState`:
params, EMA params, Adam state, step, key) and WORKDIR/classifier/config.json; the workdir
may be the score model's, whose files are not touched.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scoresde_jax import checkpoints, datasets, losses, parallel, sde_lib
from scoresde_jax.models import wideresnet_noise_conditional as wrn
from scoresde_jax.run import files, setup, train
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


def create_classifier_state(config, rng=None):
  """(model, optimizer, state): a fresh classifier and its Adam state (float32)."""
  if rng is None:
    # Its own key, distinct from the score model's PRNGKey(seed).
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  init_rng, state_rng = jax.random.split(rng)
  model, params = wrn.init_classifier(init_rng, config)
  c = config.classifier
  optimizer = losses.get_optimizer(float(c.lr), int(c.warmup), float(c.grad_clip),
                                   weight_decay=float(c.weight_decay))
  return model, optimizer, losses.init_train_state(params, optimizer, state_rng)


def _run_record(config) -> dict:
  flat = train._flatten(json.loads(config.to_json_best_effort()))  # pylint: disable=protected-access
  return {k: v for k, v in flat.items() if k.startswith(_RUN_PREFIXES) or k in _RUN_KEYS}


def check_classifier_config(directory: str, config):
  """Writes the run's classifier config, or refuses a directory holding another one."""
  path = os.path.join(directory, 'config.json')
  current = _run_record(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    differing = sorted(k for k in set(saved) | set(current)
                       if saved.get(k) != current.get(k) and k not in _RESUMABLE)
    if differing:
      shown = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in differing[:5])
      raise train.WorkdirConfigMismatch(
          f'{directory!r} holds a classifier of a different config ({shown}'
          f'{", ..." if len(differing) > 5 else ""}); use another --workdir or the same config.')
    return
  if jax.process_index() == 0:  # one writer on a shared file system
    files.write_json(path, current)


def _validate(config, num_devices: int):
  if 'classifier' not in config:
    raise setup.ConfigError('The config has no `classifier` section; use a classifier config '
                            'such as configs/ve/digits_classifier.py.')
  c = config.classifier
  if c.batch_size % num_devices:
    raise setup.ConfigError(f'classifier.batch_size={c.batch_size} is not divisible by the '
                            f'{num_devices} devices.')
  for key in ('n_iters', 'log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    if int(c[key]) <= 0:
      raise setup.ConfigError(f'classifier.{key}={c[key]} must be positive.')
  setup.get_sde(config)


_ACCURACY_FNS: dict = {}


def _accuracy_fn(model):
  if model in _ACCURACY_FNS:
    return _ACCURACY_FNS[model]

  @jax.jit
  def accuracy(params, x, y, mask, sigma, rng):
    """Correct predictions among the masked examples of x + sigma z, conditioned on sigma."""
    xs = x + sigma * jax.random.normal(rng, x.shape, x.dtype)
    logits = model.apply({'params': params}, xs, jnp.full((x.shape[0],), sigma, jnp.float32))
    return jnp.sum((jnp.argmax(logits, -1) == y) & mask)

  _ACCURACY_FNS[model] = accuracy
  return accuracy


def eval_accuracy(config, params, sigmas, split: str = 'eval', seed: int = 0) -> dict:
  """Accuracy of the classifier on all of `split`, perturbed by VE noise of each scale.

  The clean (scaled) data get sigma * z added (z fixed by `seed`) and the classifier is
  conditioned on sigma; for VP / sub-VP models sigma is the equivalent VE scale
  std / alpha (see `classifier_inputs`). Returns {sigma: accuracy in [0, 1]}.
  """
  model = wrn.get_classifier(config)
  scaler = datasets.get_data_scaler(config)
  accuracy = _accuracy_fn(model)
  batches = list(datasets.get_dataset(config, split, evaluation=True, num_devices=1))
  out = {}
  for sigma in sigmas:
    correct = total = 0
    for i, batch in enumerate(batches):
      rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
      correct += int(accuracy(params, jnp.asarray(scaler(batch['image'])),
                              jnp.asarray(batch['label']), jnp.asarray(batch['mask']),
                              jnp.float32(sigma), rng))
      total += int(batch['mask'].sum())
    out[float(sigma)] = correct / total
  return out


_TRAIN_STEPS: dict = {}


def _train_step(config, sde, eps, model, optimizer, replicated):
  """The jitted step, compiled once per (SDE, network, optimizer settings, devices)."""
  c = config.classifier
  key = (sde, eps, model, float(c.lr), int(c.warmup), float(c.grad_clip), float(c.weight_decay),
         float(c.ema_rate), replicated)
  if key not in _TRAIN_STEPS:
    step_fn = losses.get_step_fn(get_classifier_loss_fn(sde, model, eps), optimizer,
                                 float(c.ema_rate))
    # Donated: the old state is dead after the step, so its buffers are reused.
    _TRAIN_STEPS[key] = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))
  return _TRAIN_STEPS[key]


def train_classifier(config, workdir: str, max_steps: int | None = None):
  """Trains (or resumes) the classifier of `config` in WORKDIR/classifier/. Returns its state.

  `max_steps` stops after that many steps of this invocation (tests).
  """
  mesh = parallel.make_mesh()
  _validate(config, mesh.size)
  c = config.classifier
  directory = classifier_dir(workdir)
  os.makedirs(directory, exist_ok=True)
  check_classifier_config(directory, config)
  replicated = parallel.replicated(mesh)

  sde, eps = setup.get_sde(config)
  model, optimizer, state = create_classifier_state(config)
  ckpts = checkpoints.RunCheckpoints(directory)
  if ckpts.latest_step() is not None:
    state = ckpts.restore(state)
    log.info('Resuming the classifier from step %d.', int(state.step))
  state = jax.device_put(state, replicated)
  initial_step = int(state.step)

  p_train = _train_step(config, sde, eps, model, optimizer, replicated)
  scaler = datasets.get_data_scaler(config)
  train_iter = datasets.get_dataset(config, 'train', start_step=initial_step,
                                    batch_size=int(c.batch_size), additional_dim=None)
  batch_sharding = parallel.data_sharding(mesh)

  def next_batch():
    batch = next(train_iter)
    return datasets.shard_batch({'image': scaler(batch['image']), 'label': batch['label']},
                                batch_sharding)

  writer = train._make_writer(directory)  # pylint: disable=protected-access
  progress = TrainingProgress(writer, int(c.n_iters), initial_step,
                              losses.learning_rate_schedule(float(c.lr), int(c.warmup)),
                              prefix='classifier step', loss_name='classifier_loss')
  if initial_step == 0:
    progress.parameter_overview(state.params)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  log.info('Classifier WRN-%d-%d with %s parameters.', c.depth, c.width, f'{num_params:,}')

  num_steps = int(c.n_iters)
  if max_steps is not None:
    num_steps = min(num_steps, initial_step + max_steps)
  try:
    with train._Preemption() as preemption:  # pylint: disable=protected-access
      step = initial_step
      while step < num_steps:
        state, metrics = p_train(state, next_batch())
        step += 1
        progress.step(step)
        snapshot = step % c.snapshot_freq == 0 or step >= num_steps
        # Read once: a SIGTERM arriving later in this iteration is handled in the next,
        # never between the save decision and the exit.
        stop = preemption.requested
        preempt = step % c.snapshot_freq_for_preemption == 0 or stop
        if step % c.log_freq == 0 or snapshot or preempt:
          loss = float(metrics['loss'])
          if not np.isfinite(loss):
            raise train.TrainingDivergedError(
                f'Classifier loss is {loss} at step {step}; training stopped. The last checkpoint '
                f'(step {ckpts.latest_step()}) is intact; lower classifier.lr.')
          progress.report(step, loss, {'grad_norm': float(metrics['grad_norm'])})
        if step % c.eval_freq == 0:
          acc = eval_accuracy(config, state.ema_params, tuple(c.eval_sigmas))
          progress.log(f'classifier step {step}: eval accuracy (EMA) '
                       + ', '.join(f'sigma {s:g}: {a:.3f}' for s, a in acc.items()))
          if writer is not None:
            writer.write_scalars(step, {f'eval_accuracy/sigma_{s:g}': a for s, a in acc.items()})
        if snapshot or preempt:
          ckpts.save(state, snapshot=snapshot)
        if stop:
          ckpts.wait()
          progress.log(f'SIGTERM: saved classifier step {step} to {directory}; rerun to resume.',
                       logging.WARNING)
          break
  finally:
    progress.close()
    ckpts.wait()
    ckpts.close()
  return state


def restore_classifier_params(config, workdir: str, step: int | None = None, ema: bool = True):
  """The (EMA) parameters of the classifier in WORKDIR/classifier at `step` (default: newest)."""
  directory = classifier_dir(workdir)
  if not os.path.isdir(os.path.join(directory, checkpoints.SNAPSHOTS)) and not os.path.isdir(
      os.path.join(directory, checkpoints.PREEMPTION)):
    raise FileNotFoundError(f'No classifier checkpoints in {directory!r}; train one with '
                            '`python main.py --mode train_classifier --config ... --workdir '
                            f'{workdir}`.')
  _, _, template = create_classifier_state(config)
  ckpts = checkpoints.RunCheckpoints(directory, asynchronous=False)
  try:
    if ckpts.latest_step() is None:
      raise FileNotFoundError(f'No classifier checkpoints in {directory!r}.')
    state = ckpts.restore(template, step)
  finally:
    ckpts.close()
  return state.ema_params if ema else state.params


_LOG_PROB_CALLABLES: dict = {}


def get_classifier_log_prob_fn(config, workdir_or_params, step: int | None = None):
  """`log_prob_fn(x, t) -> [B, num_classes]` log p_t(y | x) for `conditional_score_fn`.

  Args:
    config: the classifier config (its SDE and `classifier.*`).
    workdir_or_params: a workdir whose classifier/ holds checkpoints (EMA parameters of
      `step`, default the newest), or a parameter tree.
  Returns:
    A `jax.tree_util.Partial` holding the parameters (traced inputs of a compiled sampler;
    one compilation per (SDE, network)). x: [B, H, W, C] states of the SDE (scaled as the
    score model's data), t: [B] times; the result is a log-softmax.
  """
  if isinstance(workdir_or_params, (str, os.PathLike)):
    params = restore_classifier_params(config, os.fspath(workdir_or_params), step)
  else:
    params = workdir_or_params
  sde, _ = setup.get_sde(config)
  model = wrn.get_classifier(config)
  key = (sde, model)
  if key not in _LOG_PROB_CALLABLES:

    def log_prob(params, x, t):
      logits = model.apply({'params': params}, *classifier_inputs(sde, x, t))
      return jax.nn.log_softmax(logits, axis=-1)

    _LOG_PROB_CALLABLES[key] = log_prob
  return jax.tree_util.Partial(_LOG_PROB_CALLABLES[key], params)
