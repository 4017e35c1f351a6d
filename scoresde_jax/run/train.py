"""The training run: `python main.py --mode train --config CONFIG --workdir DIR`.

One compiled call runs `training.n_jitted_steps` optimizer steps (`lax.scan`), with the
batch sharded over the 'data' axis of a mesh of all devices and the state replicated; the
old state is donated, so parameters are updated in place on the devices. The loop itself
(logging, NaN stop, checkpoints, SIGTERM) is `run.loop.train_loop`.

Resuming is exact: the state (parameters, EMA, optimizer, step, RNG key) is checkpointed,
the key of step s is fold_in(key, s), and the data of step s is a function of (seed, s), so a
killed and resumed run ends with the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import itertools
import logging
import math
import os

import jax
import numpy as np

from scoresde_jax import checkpoints, errors, files, losses, parallel
from scoresde_jax.run import data, images, loop, networks, programs, setup
from scoresde_jax.run.progress import TrainingProgress

log = logging.getLogger(__name__)

# Keys that may differ between a run and its resumption (schedules, logging, evaluation).
_RESUMABLE_DIFFERENCES = ('training.n_iters', 'training.snapshot_freq', 'training.log_freq',
                          'training.eval_freq', 'training.snapshot_freq_for_preemption',
                          'training.snapshot_sampling', 'eval.', 'sampling.')


def check_workdir_config(workdir: str, config):
  """Writes the run's config, or refuses a workdir that holds a run of another config."""
  loop.check_run_config(workdir, loop.config_json(config), _RESUMABLE_DIFFERENCES)


def schedule(config) -> loop.Schedule:
  t = config.training
  return loop.Schedule(int(t.n_iters), int(t.log_freq), int(t.eval_freq), int(t.snapshot_freq),
                       int(t.snapshot_freq_for_preemption), int(t.n_jitted_steps))


def validate_config(config, num_devices: int):
  """Config mistakes that would otherwise surface minutes into the run."""
  t = config.training
  if t.batch_size % num_devices:
    raise errors.ConfigError(f'training.batch_size={t.batch_size} is not divisible by the '
                            f'{num_devices} devices.')
  schedule(config).check('training')
  setup.get_sde(config)
  setup.sampler_spec(config)
  model = networks.get_model(config)
  setup.label_dropout(config, model, train=True)
  setup.class_guidance(config, model)


def snapshot_sampler(config, mesh):
  """The sampler of the training snapshots (config.sampling, up to 64 samples); PC samplers
  also record 8 steps of the diffusion for a picture of it."""
  num = min(64, config.training.batch_size)
  num -= num % mesh.size
  shape = (num, config.data.image_size, config.data.image_size, config.data.num_channels)
  spec = setup.sampler_spec(config)
  trajectory_steps = None
  if spec.method == 'pc':
    n = spec.num_scales
    trajectory_steps = np.linspace(0, n - 1, 8).round().astype(int).tolist()
  return setup.get_sampler(config, shape, parallel.data_sharding(mesh),
                           trajectory_steps=trajectory_steps)


def train(config, workdir: str, max_steps: int | None = None, program_dir: str | None = None):
  """Trains (or resumes) the run in `workdir`. Returns the final state.

  `max_steps` stops early after that many steps of this invocation (tests, benchmarks).
  `program_dir` keeps the compiled training step for the next start (`run.programs`).
  """
  mesh = parallel.make_mesh()
  validate_config(config, mesh.size)
  os.makedirs(workdir, exist_ok=True)
  replicated = parallel.replicated(mesh)
  n_jitted = int(config.training.n_jitted_steps)

  sde = setup.get_sde(config)
  ckpts = checkpoints.RunCheckpoints(workdir)
  initial_step = ckpts.latest_step() or 0
  # Data first: a missing dataset fails before minutes of network initialization, and before
  # the workdir records the config (a corrected config then starts the same workdir).
  train_iter = data.get_dataset(config, 'train', start_step=initial_step)
  model = networks.get_model(config)
  batch_fn = setup.get_batch_fn(config, model)
  if setup.class_count(config):
    # Labels the network cannot take (an unlabelled dataset) fail here, before the workdir
    # records the config.
    first = next(train_iter)
    batch_fn(first)
    train_iter = itertools.chain([first], train_iter)
  # The eval stream advances n_jitted steps per evaluation, so a resumed run continues it.
  eval_iter = data.get_dataset(
      config, 'eval', start_step=initial_step // config.training.eval_freq * n_jitted)
  check_workdir_config(workdir, config)
  optimizer = setup.get_optimizer(config)
  train_step = losses.get_multi_step_fn(losses.get_step_fn(
      setup.get_loss_fn(config, sde, model, train=True), optimizer, float(config.model.ema_rate)))
  eval_step = losses.get_multi_step_fn(losses.get_step_fn(
      setup.get_loss_fn(config, sde, model, train=False), train=False))
  p_train = programs.training_step(train_step, 'train_step', config, mesh, program_dir)
  p_eval = jax.jit(eval_step, out_shardings=(replicated, replicated))

  if initial_step:
    # The state's structure, from the stored step's signature or else traced (not computed:
    # the checkpoint replaces every value).
    template = (p_train.abstract_args()[0] if p_train.loaded
                else setup.model_and_template(config)[1])
    state = ckpts.restore(template, initial_step)
    log.info('Resuming from step %d.', initial_step)
  else:
    state = setup.create_train_state(config, jax.random.PRNGKey(config.seed))[2]
  state = jax.device_put(state, replicated)

  batch_sharding = parallel.data_sharding(mesh, batch_axis=1)

  def next_batch(iterator):
    # Scaled images; with class labels too for a class-conditional model.
    return parallel.shard_batch(batch_fn(next(iterator)), batch_sharding)

  writer = loop.make_writer(workdir)
  if writer is not None and initial_step == 0:
    writer.write_hparams(loop.flatten(loop.config_json(config)))
  progress = TrainingProgress(writer, config.training.n_iters, initial_step,
                              setup.learning_rate_schedule(config))
  if initial_step == 0:
    progress.parameter_overview(state.params)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  log.info('%s with %s parameters on %d %s device(s).', config.model.name, f'{num_params:,}',
           mesh.size, jax.devices()[0].platform)

  def evaluate(state, step):
    _, eval_metrics = p_eval(state, next_batch(eval_iter))
    eval_loss = float(np.asarray(eval_metrics['loss']).mean())
    progress.log(f'step {step}: eval loss {eval_loss:.5f}')
    if writer is not None:
      writer.write_scalars(step, {'eval_loss': eval_loss})

  sampler = snapshot_sampler(config, mesh) if config.training.snapshot_sampling else None
  inverse_scaler = data.get_data_inverse_scaler(config)

  def on_snapshot(state, step):
    score_fn = setup.get_score_fn(config, sde, model, state.ema_params)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step)
    save_samples(sampler, score_fn, rng, inverse_scaler,
                 os.path.join(workdir, 'samples', f'iter_{step}'), writer, step)

  trainable = loop.Trainable(lambda state: p_train(state, next_batch(train_iter)), evaluate,
                             on_snapshot if sampler is not None else None,
                             hint='lower optim.lr or check the data')
  return loop.train_loop(trainable, state, schedule(config), ckpts, progress, initial_step,
                         max_steps, where=workdir)


def save_samples(sampler, score_fn, rng, inverse_scaler, directory: str, writer=None,
                 step: int = 0):
  """A grid (sample.png), the uint8 samples (sample.npz) and, from a PC sampler, a picture of
  the diffusion (diffusion.png) in `directory`; the same two pictures to `writer`
  (TensorBoard images 'samples' and 'diffusion' at `step`) when one is given."""
  out = sampler(rng, score_fn)
  samples = inverse_scaler(parallel.gather(out[0]))  # collective: every host gathers
  trajectory = inverse_scaler(parallel.gather(out[2])) if len(out) == 3 else None
  if jax.process_index() != 0:
    return
  os.makedirs(directory, exist_ok=True)
  image_size = samples.shape[1]
  scale = max(1, 128 // image_size)
  nrow = int(math.sqrt(len(samples)))
  images.save_grid(samples, os.path.join(directory, 'sample.png'), nrow=nrow, scale=scale)
  files.write_npz(os.path.join(directory, 'sample.npz'), samples=images.to_uint8(samples))
  if trajectory is not None:
    images.save_trajectory(trajectory, os.path.join(directory, 'diffusion.png'), scale=scale)
  if writer is not None:
    # Unscaled pictures (TensorBoard zooms), but tiles of at least 32 pixels: the 8x8 digits
    # would be specks.
    tb_scale = max(1, 32 // image_size)
    pictures = {'samples': images.make_grid(samples, nrow)}
    if trajectory is not None:
      pictures['diffusion'] = images.make_grid(*images.trajectory_rows(trajectory))
    writer.write_images(step, {name: _upscale(grid, tb_scale) for name, grid in pictures.items()})


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of `image: [H, W, C]` by an integer factor."""
  return image if scale == 1 else image.repeat(scale, axis=0).repeat(scale, axis=1)
