"""The training run: `python main.py --mode train --config CONFIG --workdir DIR`.

One compiled call runs `training.n_jitted_steps` optimizer steps (`lax.scan`), with the
batch sharded over the 'data' axis of a mesh of all devices and the state replicated; the
old state is donated, so parameters are updated in place on the devices.

Resuming is exact: the state (parameters, EMA, optimizer, step, RNG key) is checkpointed,
the key of step s is fold_in(key, s), and the data of step s is a function of (seed, s), so a
killed and resumed run ends with the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal

import jax
import numpy as np

from scoresde_jax import checkpoints, datasets, losses, parallel, sampling
from scoresde_jax.run import files, images, setup
from scoresde_jax.run.progress import TrainingProgress

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
  pass


class WorkdirConfigMismatch(ValueError):
  pass


# Keys that may differ between a run and its resumption (schedules, logging, evaluation).
_RESUMABLE_DIFFERENCES = ('training.n_iters', 'training.snapshot_freq', 'training.log_freq',
                          'training.eval_freq', 'training.snapshot_freq_for_preemption',
                          'training.snapshot_sampling', 'eval.', 'sampling.')


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_workdir_config(workdir: str, config):
  """Writes the run's config, or refuses a workdir that holds a run of another config."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    a, b = _flatten(saved), _flatten(current)
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                       and not any(k.startswith(p) for p in _RESUMABLE_DIFFERENCES))
    if differing:
      shown = ', '.join(f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in differing[:5])
      raise WorkdirConfigMismatch(
          f'{workdir!r} holds a run of a different config ({shown}'
          f'{", ..." if len(differing) > 5 else ""}); use a new --workdir, or the same config.')
    return
  if jax.process_index() == 0:  # one writer on a shared file system
    files.write_json(path, current)


def validate_config(config, num_devices: int):
  t = config.training
  if t.batch_size % num_devices:
    raise setup.ConfigError(f'training.batch_size={t.batch_size} is not divisible by the '
                            f'{num_devices} devices.')
  for key in ('snapshot_freq', 'log_freq', 'eval_freq', 'snapshot_freq_for_preemption'):
    if t[key] % t.n_jitted_steps:
      raise setup.ConfigError(f'training.{key}={t[key]} must be a multiple of '
                              f'training.n_jitted_steps={t.n_jitted_steps}.')
  setup.get_sde(config)
  sampling.get_predictor(config.sampling.predictor)
  sampling.get_corrector(config.sampling.corrector)


def _make_writer(workdir: str):
  """clu writers (console + TensorBoard); console only where clu or TensorBoard is missing."""
  try:
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    log.warning('No TensorBoard event files (%s); install the tfds extra, '
                '`pip install "scoresde_jax[tfds]"`, for them.', e)
    return None
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


class _Preemption:
  """Turns SIGTERM (what schedulers send before killing a job) into a flag the loop polls."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, the periodic checkpoints remain
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _snapshot_sampler(config, sde, eps, shape, sharding):
  """Sampler for the training snapshots; PC samplers also return the diffusion trajectory."""
  if config.sampling.method.lower() != 'pc':
    return sampling.get_sampling_fn(config, sde, shape, eps, sharding=sharding), False
  steps = np.linspace(0, sde.N - 1, 8).round().astype(int).tolist()
  sampler = sampling.get_pc_sampler(
      sde, shape, config.sampling.predictor, config.sampling.corrector, config.sampling.snr,
      config.sampling.n_steps_each, probability_flow=config.sampling.probability_flow,
      denoise=config.sampling.noise_removal, eps=eps, trajectory_steps=steps, sharding=sharding)
  return sampler, True


def train(config, workdir: str, max_steps: int | None = None):
  """Trains (or resumes) the run in `workdir`. Returns the final state.

  `max_steps` stops early after that many steps of this invocation (tests, benchmarks).
  """
  mesh = parallel.make_mesh()
  validate_config(config, mesh.size)
  os.makedirs(workdir, exist_ok=True)
  check_workdir_config(workdir, config)
  replicated = parallel.replicated(mesh)
  n_jitted = config.training.n_jitted_steps

  sde, eps = setup.get_sde(config)
  ckpts = checkpoints.RunCheckpoints(workdir)
  initial_step = ckpts.latest_step() or 0
  # Data first: a missing dataset fails before minutes of network initialization.
  train_iter = datasets.get_dataset(config, 'train', start_step=initial_step)
  # The eval stream advances n_jitted steps per evaluation, so a resumed run continues it.
  eval_iter = datasets.get_dataset(
      config, 'eval', start_step=initial_step // config.training.eval_freq * n_jitted)
  model, optimizer, state = setup.create_train_state(config, jax.random.PRNGKey(config.seed))
  if initial_step:
    state = ckpts.restore(state, initial_step)
    log.info('Resuming from step %d.', initial_step)
  state = jax.device_put(state, replicated)

  train_step = losses.get_multi_step_fn(losses.get_step_fn(
      setup.get_loss_fn(config, sde, model, train=True), optimizer, config.model.ema_rate))
  eval_step = losses.get_multi_step_fn(losses.get_step_fn(
      setup.get_loss_fn(config, sde, model, train=False), train=False))
  # Donated: the old state is dead after the step, so its buffers are reused.
  p_train = jax.jit(train_step, donate_argnums=0, out_shardings=(replicated, replicated))
  p_eval = jax.jit(eval_step, out_shardings=(replicated, replicated))

  scaler = datasets.get_data_scaler(config)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  batch_sharding = parallel.data_sharding(mesh, batch_axis=1)

  def next_batch(iterator):
    return datasets.shard_batch(scaler(next(iterator)['image']), batch_sharding)

  writer = _make_writer(workdir)
  if writer is not None and initial_step == 0:
    writer.write_hparams({k: str(v) for k, v in _flatten(json.loads(config.to_json_best_effort())).items()})
  progress = TrainingProgress(writer, config.training.n_iters, initial_step,
                              losses.learning_rate_schedule(config.optim.lr, config.optim.warmup))
  if initial_step == 0:
    progress.parameter_overview(state.params)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  log.info('%s with %s parameters on %d %s device(s).', config.model.name, f'{num_params:,}',
           mesh.size, jax.devices()[0].platform)

  sample_dir = os.path.join(workdir, 'samples')
  num_steps = config.training.n_iters
  if max_steps is not None:
    num_steps = min(num_steps, initial_step + max_steps)
  pending = None  # (step, metrics) of the previous call, checked one call late

  def check(step, metrics):
    loss = np.asarray(jax.device_get(metrics['loss']))
    if not np.all(np.isfinite(loss)):
      bad = step - n_jitted + int(np.argmin(np.isfinite(loss)))
      raise TrainingDivergedError(
          f'Loss is {loss[~np.isfinite(loss)][0]} at step {bad + 1}; training stopped. The last '
          f'checkpoint (step {ckpts.latest_step()}) is intact; lower optim.lr or check the data.')
    return loss

  try:
    with _Preemption() as preemption:
      step = initial_step
      while step < num_steps:
        state, metrics = p_train(state, next_batch(train_iter))
        step += n_jitted
        progress.step(step)
        if pending is not None:
          check(*pending)
        pending = (step, metrics)

        snapshot = step % config.training.snapshot_freq == 0 or step >= num_steps
        # Read once: a SIGTERM arriving later in this iteration is handled in the next,
        # never between the save decision and the exit.
        stop = preemption.requested
        preempt = step % config.training.snapshot_freq_for_preemption == 0 or stop
        if step % config.training.log_freq == 0 or snapshot or preempt:
          loss = check(*pending)
          progress.report(step, float(loss.mean()),
                          {'grad_norm': float(np.asarray(metrics['grad_norm']).mean())})
        if step % config.training.eval_freq == 0:
          _, eval_metrics = p_eval(state, next_batch(eval_iter))
          eval_loss = float(np.asarray(eval_metrics['loss']).mean())
          progress.log(f'step {step}: eval loss {eval_loss:.5f}')
          if writer is not None:
            writer.write_scalars(step, {'eval_loss': eval_loss})
        if snapshot or preempt:
          ckpts.save(state, snapshot=snapshot)
        if snapshot and config.training.snapshot_sampling:
          _save_samples(config, sde, eps, state, model, inverse_scaler, mesh,
                        os.path.join(sample_dir, f'iter_{step}'), step)
        if stop:
          ckpts.wait()
          progress.log(f'SIGTERM: saved step {step} to {workdir}; rerun the same command to '
                       'resume.', logging.WARNING)
          break
  finally:
    progress.close()
    ckpts.wait()
    ckpts.close()
  return state


def _save_samples(config, sde, eps, state, model, inverse_scaler, mesh, directory, step):
  num = min(64, config.training.batch_size)
  num -= num % mesh.size
  shape = (num, config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler, with_trajectory = _snapshot_sampler(config, sde, eps, shape,
                                               parallel.data_sharding(mesh))
  score_fn = setup.get_score_fn(config, sde, model, state.ema_params)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step)
  out = sampler(rng, score_fn)
  samples = inverse_scaler(parallel.gather(out[0]))  # collective: every host gathers
  trajectory = inverse_scaler(parallel.gather(out[2])) if with_trajectory else None
  if jax.process_index() != 0:
    return
  os.makedirs(directory, exist_ok=True)
  scale = max(1, 128 // config.data.image_size)
  images.save_grid(samples, os.path.join(directory, 'sample.png'),
                   nrow=int(math.sqrt(num)), scale=scale)
  files.write_npz(os.path.join(directory, 'sample.npz'), samples=images.to_uint8(samples))
  if trajectory is not None:
    images.save_trajectory(trajectory, os.path.join(directory, 'diffusion.png'), scale=scale)
