"""Training a GAN, the generator and discriminator of DDLS (`--mode sample_gan`):

    python main.py --mode train_gan --config configs/gan/digits.py --workdir runs/digits_gan

The networks are `models.gan` (a DCGAN, fields from `config.gan`), trained with the
non-saturating loss and optionally R1 (`gan.r1_gamma`), one discriminator update then one
generator update per step, each with its own Adam. The loop is the score model's
(`run.loop.train_loop`: progress, NaN stop, snapshots, SIGTERM), and resuming is exact the
same way: the whole state (both networks, the EMA of G, both Adam states, step, key) is one
pytree (`GANState`) checkpointed by orbax, the key of step s is fold_in(key, s) and the data
of step s a function of (seed, s).

Layout: WORKDIR/{checkpoints, checkpoints-meta}/<step>/, WORKDIR/config.json, and at every
snapshot WORKDIR/samples/iter_<step>/ with grids of G (sample.png) and of its EMA
(ema_sample.png) at fixed latents, and sample.npz (uint8 images of G).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from scoresde_jax import checkpoints, errors, files, losses, parallel
from scoresde_jax.models import gan
from scoresde_jax.run import data, images, loop, programs
from scoresde_jax.run.progress import TrainingProgress

log = logging.getLogger(__name__)

# Keys that may differ between a run and its resumption (schedules, sampling, evaluation).
_RESUMABLE = ('gan.n_iters', 'gan.log_freq', 'gan.snapshot_freq',
              'gan.snapshot_freq_for_preemption', 'ddls.', 'eval.')
# The keys of config.gan that are fields of the networks.
_GENERATOR_KEYS = {'latent_dim': 'gan.latent_dim', 'features': 'gan.g_features',
                   'image_size': 'data.image_size', 'num_channels': 'data.num_channels',
                   'centered': 'data.centered'}
_DISCRIMINATOR_KEYS = {'features': 'gan.d_features', 'image_size': 'data.image_size'}


@flax.struct.dataclass
class GANState:
  """Everything a resumed GAN run needs; `rng` is the base key (step s uses fold_in(rng, s))."""
  step: jax.Array
  g_params: Any
  d_params: Any
  g_ema_params: Any
  g_opt_state: Any
  d_opt_state: Any
  rng: jax.Array


def is_gan_config(config) -> bool:
  return 'gan' in config


def require_gan_config(config):
  if not is_gan_config(config):
    raise errors.ConfigError('This is not a GAN config (it has no `gan` section); use one such '
                             'as configs/gan/digits.py, or --mode train for a score model.')


def get_networks(config) -> tuple[gan.Generator, gan.Discriminator]:
  """The generator and discriminator of `config.gan` for config.data's images."""
  require_gan_config(config)
  g, d = config.gan, config.data
  values = {'latent_dim': g.latent_dim, 'image_size': d.image_size,
            'num_channels': d.num_channels, 'centered': d.centered}
  with errors.config_errors(_GENERATOR_KEYS):
    generator = gan.Generator(features=g.g_features, **values)
  with errors.config_errors(_DISCRIMINATOR_KEYS):
    discriminator = gan.Discriminator(image_size=d.image_size, features=g.d_features)
  return generator, discriminator


def get_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Adam for G and for D (DCGAN's beta1 = 0.5 in the digits config)."""
  g = config.gan
  return (optax.adam(float(g.lr_g), b1=float(g.beta1), b2=float(g.beta2)),
          optax.adam(float(g.lr_d), b1=float(g.beta1), b2=float(g.beta2)))


def create_gan_state(config, abstract: bool = False):
  """(generator, discriminator, (g_optimizer, d_optimizer), a fresh GANState).

  abstract: the state's shapes and dtypes only (jax.ShapeDtypeStruct leaves), a template to
  restore a checkpoint into without initializing anything.
  """
  generator, discriminator = get_networks(config)
  g_opt, d_opt = get_optimizers(config)

  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    g_params, d_params = gan.init_params(init_rng, generator, discriminator)
    return GANState(step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_params,
                    g_ema_params=g_params, g_opt_state=g_opt.init(g_params),
                    d_opt_state=d_opt.init(d_params), rng=state_rng)

  rng = jax.random.PRNGKey(config.seed)
  # One program: run eagerly, every initializer and optimizer slot is its own compilation.
  state = jax.eval_shape(init, rng) if abstract else jax.jit(init)(rng)
  return generator, discriminator, (g_opt, d_opt), state


def get_step_fn(generator, discriminator, g_opt, d_opt, r1_gamma: float = 0.0,
                ema_rate: float = 0.999):
  """`step(state, real) -> (state, metrics)`: one D update, then one G update against the new D.

  real: [B, H, W, C] data scaled as G's output. metrics: loss (D's + G's: finite iff both
  are), d_loss (with R1), g_loss, r1, grad_norm (D's), g_grad_norm.
  """
  def g_apply(params, z):
    return generator.apply({'params': params}, z)

  def d_apply(params, x):
    return discriminator.apply({'params': params}, x)

  def step(state: GANState, real):
    d_rng, g_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    latent = (real.shape[0], generator.latent_dim)
    fake = g_apply(state.g_params, jax.random.normal(d_rng, latent))
    (d_loss, r1), d_grads = jax.value_and_grad(
        lambda p: gan.discriminator_loss(d_apply, p, real, fake, r1_gamma), has_aux=True)(
            state.d_params)
    d_updates, d_opt_state = d_opt.update(d_grads, state.d_opt_state, state.d_params)
    d_params = optax.apply_updates(state.d_params, d_updates)

    z = jax.random.normal(g_rng, latent)
    g_loss, g_grads = jax.value_and_grad(
        lambda p: gan.generator_loss(d_apply, d_params, g_apply(p, z)))(state.g_params)
    g_updates, g_opt_state = g_opt.update(g_grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)
    g_ema_params = losses.ema_update(state.g_ema_params, g_params, ema_rate)
    new_state = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params,
                              g_ema_params=g_ema_params, g_opt_state=g_opt_state,
                              d_opt_state=d_opt_state)
    return new_state, {'loss': d_loss + g_loss, 'd_loss': d_loss, 'g_loss': g_loss, 'r1': r1,
                       'grad_norm': losses.global_norm(d_grads),
                       'g_grad_norm': losses.global_norm(g_grads)}

  return step


def schedule(config) -> loop.Schedule:
  g = config.gan
  # No periodic evaluation: its period only has to pass the schedule's check.
  return loop.Schedule(int(g.n_iters), int(g.log_freq), int(g.log_freq), int(g.snapshot_freq),
                       int(g.snapshot_freq_for_preemption), int(g.get('n_jitted_steps', 1)))


def validate_config(config, num_devices: int):
  """Config mistakes that would otherwise surface minutes into the run."""
  require_gan_config(config)
  g = config.gan
  if int(g.batch_size) <= 0 or g.batch_size % num_devices:
    raise errors.ConfigError(f'gan.batch_size={g.batch_size} must be a positive multiple of the '
                             f'{num_devices} devices.')
  if int(g.n_iters) <= 0:
    raise errors.ConfigError(f'gan.n_iters={g.n_iters} must be positive.')
  if float(g.r1_gamma) < 0:
    raise errors.ConfigError(f'gan.r1_gamma={g.r1_gamma} must be >= 0 (0: no R1 penalty).')
  if not 0 <= float(g.ema_rate) < 1:
    raise errors.ConfigError(f'gan.ema_rate={g.ema_rate} must lie in [0, 1).')
  schedule(config).check('gan')
  get_networks(config)


def check_workdir_config(workdir: str, config):
  """Writes the run's config, or refuses a workdir that holds a run of another config."""
  loop.check_run_config(workdir, loop.config_json(config), _RESUMABLE, what='GAN run')


def snapshot_latents(config, num: int):
  """The fixed latents of the snapshot grids, so grids of successive snapshots compare."""
  return jax.random.normal(jax.random.PRNGKey(config.seed + 1), (num, config.gan.latent_dim))


def train_gan(config, workdir: str, max_steps: int | None = None,
              program_dir: str | None = None):
  """Trains (or resumes) the GAN run in `workdir`. Returns the final GANState.

  `max_steps` stops after that many steps of this invocation (tests). `program_dir` keeps the
  compiled step for the next start (`run.programs`).
  """
  mesh = parallel.make_mesh()
  validate_config(config, mesh.size)
  g = config.gan
  os.makedirs(workdir, exist_ok=True)
  replicated = parallel.replicated(mesh)
  steps = schedule(config)

  ckpts = checkpoints.RunCheckpoints(workdir)
  initial_step = ckpts.latest_step() or 0
  # Data first: a missing dataset fails before the workdir records the config.
  train_iter = data.get_dataset(config, 'train', start_step=initial_step,
                                batch_size=int(g.batch_size), additional_dim=steps.steps_per_call)
  check_workdir_config(workdir, config)
  # Resuming: a template of shapes suffices (no initialization to compile).
  generator, discriminator, (g_opt, d_opt), state = create_gan_state(
      config, abstract=bool(initial_step))
  if initial_step:
    state = ckpts.restore(state, initial_step)
    log.info('Resuming the GAN from step %d.', initial_step)
  state = jax.device_put(state, replicated)

  step_fn = losses.get_multi_step_fn(get_step_fn(generator, discriminator, g_opt, d_opt, float(g.r1_gamma),
                                    float(g.ema_rate)))
  p_train = programs.training_step(step_fn, 'gan_step', config, mesh, program_dir)
  scaler = data.get_data_scaler(config)
  batch_sharding = parallel.data_sharding(mesh, batch_axis=1)

  def train_step(state):
    return p_train(state, parallel.shard_batch(scaler(next(train_iter)['image']),
                                               batch_sharding))

  writer = loop.make_writer(workdir)
  if writer is not None and initial_step == 0:
    writer.write_hparams(loop.flatten(loop.config_json(config)))
  progress = TrainingProgress(writer, int(g.n_iters), initial_step, prefix='GAN step',
                              loss_name='gan_loss')
  if initial_step == 0:
    progress.parameter_overview({'generator': state.g_params, 'discriminator': state.d_params})
  sizes = [sum(x.size for x in jax.tree_util.tree_leaves(p)) for p in (state.g_params,
                                                                         state.d_params)]
  log.info('DCGAN: generator %s, discriminator %s parameters on %d %s device(s).',
           f'{sizes[0]:,}', f'{sizes[1]:,}', mesh.size, jax.devices()[0].platform)

  num = max(mesh.size, min(64, int(g.batch_size)) // mesh.size * mesh.size)
  z = jax.device_put(snapshot_latents(config, num), parallel.data_sharding(mesh))
  generate = jax.jit(lambda params, z: generator.apply({'params': params}, z))
  inverse_scaler = data.get_data_inverse_scaler(config)

  def on_snapshot(state, step):
    pictures = {name: inverse_scaler(parallel.gather(generate(params, z)))
                for name, params in (('sample', state.g_params),
                                     ('ema_sample', state.g_ema_params))}
    if jax.process_index() != 0:
      return
    directory = os.path.join(workdir, 'samples', f'iter_{step}')
    save_grids(pictures, directory)
    files.write_npz(os.path.join(directory, 'sample.npz'),
                    samples=images.to_uint8(pictures['sample']))

  trainable = loop.Trainable(train_step, on_snapshot=on_snapshot, loss_label='GAN loss',
                             hint='lower gan.lr_g / gan.lr_d, or set gan.r1_gamma > 0')
  return loop.train_loop(trainable, state, steps, ckpts, progress, initial_step, max_steps,
                         where=workdir)


def save_grids(pictures: dict, directory: str, nrow: int | None = None):
  """Each `name: [B, H, W, C] in [0, 1]` of `pictures` as the grid DIRECTORY/<name>.png."""
  os.makedirs(directory, exist_ok=True)
  for name, x in pictures.items():
    images.save_grid(x, os.path.join(directory, f'{name}.png'),
                     nrow=nrow or int(math.ceil(math.sqrt(len(x)))),
                     scale=max(1, 128 // x.shape[1]))


def restore_gan(config, workdir: str, step: int | None = None):
  """(generator, discriminator, GANState at `step`, default the newest) of a GAN run."""
  require_gan_config(config)
  if not any(os.path.isdir(os.path.join(workdir, d))
             for d in (checkpoints.SNAPSHOTS, checkpoints.PREEMPTION)):
    raise errors.CheckpointNotFoundError(
        f'No GAN checkpoints in {workdir!r}; train one with `python main.py --mode train_gan '
        f'--config ... --workdir {workdir}`.')
  ckpts = checkpoints.RunCheckpoints(workdir, asynchronous=False)
  try:
    if ckpts.latest_step() is None:
      raise errors.CheckpointNotFoundError(f'No GAN checkpoints in {workdir!r}.')
    generator, discriminator, _, template = create_gan_state(config, abstract=True)
    return generator, discriminator, ckpts.restore(template, step)
  finally:
    ckpts.close()
