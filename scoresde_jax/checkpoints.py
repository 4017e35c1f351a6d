"""Checkpoints of training runs: a thin layer over orbax.

Layout of a work directory (the reference's, so its habits carry over):

  WORKDIR/checkpoints/<step>/       snapshots every `training.snapshot_freq` steps, kept;
                                    evaluation's checkpoint index n is step n * snapshot_freq
  WORKDIR/checkpoints-meta/<step>/  the latest state for resuming, every
                                    `training.snapshot_freq_for_preemption` steps and on SIGTERM
  WORKDIR/config.json               the run's config, to refuse resuming a different config

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
crash or kill during a save never leaves a half-written checkpoint that looks finished;
the previous checkpoints stay intact. Saves are asynchronous: training continues while the
arrays are written; `wait()` blocks until they are on disk.

A checkpoint holds the whole `losses.TrainState` (step, params, EMA params, optimizer
state, RNG key) as a nested dict of arrays, restored into the structure of a template state.
"""
from __future__ import annotations

import os

import flax
import jax
import orbax.checkpoint as ocp

from scoresde_jax.errors import CheckpointError

SNAPSHOTS = 'checkpoints'
PREEMPTION = 'checkpoints-meta'


class RunCheckpoints:
  """Snapshot and preemption checkpoint managers of one work directory."""

  def __init__(self, workdir: str, max_to_keep_preemption: int = 1, asynchronous: bool = True):
    workdir = os.path.abspath(workdir)

    def options(name, **kwargs):
      # On many hosts the two managers often save the same step at once; orbax names its
      # cross-host barriers by step, so each manager needs its own prefix.
      return ocp.CheckpointManagerOptions(
          enable_async_checkpointing=asynchronous, create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=name),
          **kwargs)

    self.snapshots = ocp.CheckpointManager(os.path.join(workdir, SNAPSHOTS),
                                           options=options(SNAPSHOTS))
    self.preemption = ocp.CheckpointManager(
        os.path.join(workdir, PREEMPTION),
        options=options(PREEMPTION, max_to_keep=max_to_keep_preemption))

  def save(self, state, snapshot: bool = False, force: bool = False):
    """Saves `state` at its step as the resume point, and as a kept snapshot if asked."""
    step = int(jax.device_get(state.step))
    tree = flax.serialization.to_state_dict(state)
    devices = jax.devices()
    if len(devices) > 1 and jax.process_count() == 1 and devices[0].platform == 'cpu':
      # Orbax splits the writing of a replicated array among its replicas, compiling a slice
      # program for every array shape on the first save (8 s for the digits network on 8
      # host devices); CPU devices share one memory, so one replica is written instead.
      tree = jax.device_put(tree, devices[0])
    managers = [self.preemption] + ([self.snapshots] if snapshot else [])
    for manager in managers:
      if manager.latest_step() == step:
        continue
      manager.save(step, args=ocp.args.StandardSave(tree), force=force)

  def latest_step(self) -> int | None:
    """The newest resumable step (snapshot or preemption), or None for a fresh run."""
    steps = [s for s in (self.preemption.latest_step(), self.snapshots.latest_step()) if s is not None]
    return max(steps) if steps else None

  def restore(self, template, step: int | None = None):
    """Restores the state at `step` (default: newest) into the structure of `template`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError('No checkpoint to restore.')
    manager = self.preemption if step in self.preemption.all_steps() else self.snapshots
    if step not in manager.all_steps():
      raise CheckpointError(f'No checkpoint at step {step}; snapshots at steps '
                            f'{sorted(self.snapshots.all_steps())}.')
    return _restore_into(manager, step, template)

  def snapshot_steps(self) -> list[int]:
    return sorted(self.snapshots.all_steps())

  def wait(self):
    self.snapshots.wait_until_finished()
    self.preemption.wait_until_finished()

  def close(self):
    self.snapshots.close()
    self.preemption.close()


def snapshot_steps(workdir: str) -> list[int]:
  """Steps of the finished snapshots in WORKDIR/checkpoints (empty when there are none)."""
  directory = os.path.join(os.path.abspath(workdir), SNAPSHOTS)
  if not os.path.isdir(directory):
    return []
  with ocp.CheckpointManager(directory,
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    return sorted(int(s) for s in manager.all_steps())


def restore_snapshot(workdir: str, template, step: int):
  """Restores the snapshot at `step` of a run (for evaluation); read-only."""
  directory = os.path.join(os.path.abspath(workdir), SNAPSHOTS)
  if not os.path.isdir(directory):
    raise CheckpointError(f'{workdir!r} holds no checkpoints ({directory} does not exist).')
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    if step not in m.all_steps():
      raise CheckpointError(f'No checkpoint at step {step} in {directory}; '
                            f'available steps: {sorted(m.all_steps())}.')
    return _restore_into(m, step, template)


def _restore_into(manager, step: int, template):
  """Checkpoint `step` of `manager`, read into arrays shaped and typed as `template`'s and
  returned in its structure."""
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                    flax.serialization.to_state_dict(template))
  tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return flax.serialization.from_state_dict(template, tree)
