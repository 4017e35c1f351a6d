"""The one training-loop driver, for every trainable (the score model, the classifier, the GAN).

A trainable brings a `Trainable`: its compiled step on the next batch, and optional
evaluation and snapshot hooks. `train_loop` does the rest the same way for all of them:
the step schedule, progress and TensorBoard scalars, the NaN check (one call late, so
the host never waits for the device), snapshots and preemption checkpoints, SIGTERM (save,
then exit cleanly) and closing the checkpoint managers however the loop ends.

`check_run_config` keeps a work directory to one config: it writes the run's config on the
first start and refuses to resume under a config that differs in keys that matter.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from typing import Callable, Sequence

import jax
import numpy as np

from scoresde_jax import errors, files

log = logging.getLogger(__name__)


def flatten(d: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_json(config) -> dict:
  """The config as JSON values, nested as the config ({'training': {'batch_size': 64}})."""
  return json.loads(config.to_json_best_effort())


def check_run_config(directory: str, record: dict, may_differ: Sequence[str], what: str = 'run'):
  """Writes `record` to DIRECTORY/config.json, or refuses a directory holding another run.

  `record` is a dict of config values (nested or flat, JSON-ready); keys starting with one of
  `may_differ` (schedules, logging, evaluation) may change between a run and its resumption.
  """
  path = os.path.join(directory, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = flatten(json.load(f))
    current = flatten(record)
    # Keys the saved config lacks were added to the configs after the run started: not a
    # difference of the run's (its code used their defaults' behaviour).
    differing = sorted(k for k in saved if saved[k] != current.get(k)
                       and not any(k.startswith(p) for p in may_differ))
    if differing:
      shown = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in differing[:5])
      raise errors.WorkdirConfigMismatch(
          f'{directory!r} holds a {what} of a different config ({shown}'
          f'{", ..." if len(differing) > 5 else ""}); use a new --workdir, or the same config.')
    return
  if jax.process_index() == 0:  # one writer on a shared file system
    files.write_json(path, record)


_warned_no_tensorboard = False


def make_writer(directory: str):
  """The run's TensorBoard writer (`run.tensorboard`: the `tensorboard` package, no
  TensorFlow); a no-op writer on every process but the first; None (log lines only, one
  warning) where the `tensorboard` package is missing."""
  global _warned_no_tensorboard  # pylint: disable=global-statement
  try:
    from scoresde_jax.run import tensorboard  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    if not _warned_no_tensorboard:
      _warned_no_tensorboard = True
      log.warning('No TensorBoard event files (%s); `pip install tensorboard` for them.', e)
    return None
  return tensorboard.create_writer(directory, active=jax.process_index() == 0)


class Preemption:
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


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop logs, evaluates and saves, in steps (multiples of steps_per_call)."""
  total_steps: int
  log_freq: int
  eval_freq: int
  snapshot_freq: int
  preemption_freq: int
  steps_per_call: int = 1

  def check(self, section: str):
    """ConfigError unless every period is a positive multiple of steps_per_call."""
    for key in ('log_freq', 'eval_freq', 'snapshot_freq', 'preemption_freq'):
      value = getattr(self, key)
      name = 'snapshot_freq_for_preemption' if key == 'preemption_freq' else key
      if value <= 0:
        raise errors.ConfigError(f'{section}.{name}={value} must be positive.')
      if value % self.steps_per_call:
        raise errors.ConfigError(f'{section}.{name}={value} must be a multiple of '
                                 f'{section}.n_jitted_steps={self.steps_per_call}.')


@dataclasses.dataclass
class Trainable:
  """What one kind of training brings to `train_loop`.

  step: `step(state) -> (state, metrics)`, one compiled call on the next batch that advances
    `Schedule.steps_per_call` steps; metrics['loss'] (and 'grad_norm', and any other scalars
    to log) are `[steps_per_call]`.
  evaluate: `evaluate(state, step)`, every eval_freq steps (logs and writes its own scalars).
  on_snapshot: `on_snapshot(state, step)`, after each snapshot is saved (sample grids).
  loss_label, hint: the NaN error reads '<loss_label> is nan at step s; training stopped.
    ... <hint>.'
  """
  step: Callable
  evaluate: Callable | None = None
  on_snapshot: Callable | None = None
  loss_label: str = 'Loss'
  hint: str = 'lower the learning rate or check the data'


def train_loop(trainable: Trainable, state, schedule: Schedule, ckpts, progress,
               initial_step: int, max_steps: int | None = None, where: str = ''):
  """Runs `trainable` from `initial_step` to the schedule's end (or `max_steps` more steps).

  Saves a snapshot every snapshot_freq steps and at the end, a resume point every
  preemption_freq steps and on SIGTERM (then returns). Closes `ckpts` and `progress`.
  Raises errors.TrainingDivergedError at the first non-finite loss. Returns the last state.
  """
  num_steps = schedule.total_steps
  if max_steps is not None:
    num_steps = min(num_steps, initial_step + max_steps)
  k = schedule.steps_per_call
  pending = None  # (step, metrics) of the previous call, checked one call late

  def check(step, metrics):
    loss = np.asarray(jax.device_get(metrics['loss'])).reshape(-1)
    if not np.all(np.isfinite(loss)):
      bad = step - k + int(np.argmin(np.isfinite(loss)))
      raise errors.TrainingDivergedError(
          f'{trainable.loss_label} is {loss[~np.isfinite(loss)][0]} at step {bad + 1}; training '
          f'stopped. The last checkpoint (step {ckpts.latest_step()}) is intact; '
          f'{trainable.hint}.')
    return loss

  try:
    with Preemption() as preemption:
      step = initial_step
      while step < num_steps:
        state, metrics = trainable.step(state)
        step += k
        progress.step(step)
        if pending is not None:
          check(*pending)
        pending = (step, metrics)

        snapshot = step % schedule.snapshot_freq == 0 or step >= num_steps
        # Read once: a SIGTERM arriving later in this iteration is handled in the next,
        # never between the save decision and the exit.
        stop = preemption.requested
        preempt = step % schedule.preemption_freq == 0 or stop
        if step % schedule.log_freq == 0 or snapshot or preempt:
          loss = check(*pending)
          progress.report(step, float(loss.mean()),
                          {name: float(np.asarray(value).mean())
                           for name, value in metrics.items() if name != 'loss'})
        if trainable.evaluate is not None and step % schedule.eval_freq == 0:
          trainable.evaluate(state, step)
        if snapshot or preempt:
          ckpts.save(state, snapshot=snapshot)
        if snapshot and trainable.on_snapshot is not None:
          trainable.on_snapshot(state, step)
        if stop:
          ckpts.wait()
          progress.log(f'SIGTERM: saved step {step} to {where}; rerun the same command to '
                       'resume.', logging.WARNING)
          break
  finally:
    progress.close()
    ckpts.wait()
    ckpts.close()
  return state
