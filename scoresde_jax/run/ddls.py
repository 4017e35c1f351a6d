"""Discriminator-driven latent sampling (DDLS, Che et al. 2020) of a trained GAN:

    python main.py --mode sample_gan --config configs/gan/digits.py --workdir runs/digits_gan

The GAN of the run (`run.train_gan`, newest checkpoint) defines the latent energy
E(z) = |z|^2 / 2 - d(G(z)) (`mcmc.latent_energy`); `mcmc.langevin_chain` runs
`ddls.n_steps` Langevin moves on it from z0 ~ N(0, I) with the step size `ddls.step_size`,
multiplied by `ddls.decay` every `ddls.decay_every` moves. One batch of `ddls.batch_size` chains,
their images and logits are one compiled program.

Writes WORKDIR/<eval_folder>/ddls/: step_<k>.png, a grid of G(z_k) for each recorded step k
of `ddls.record_steps` (k = 0: the generator alone); chain.png, eight chains (rows) across
the recorded steps; samples.npz with `images` (uint8 [R, N, H, W, C]), `latents` ([R, N, L]),
`logits` (d(G(z_k)), [R, N]) and `record_steps` ([R]).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import numpy as np

from scoresde_jax import errors, files, mcmc, parallel
from scoresde_jax.run import data, images, train_gan

log = logging.getLogger(__name__)

_SCHEDULE_KEYS = {'eps': 'ddls.step_size', 'factor': 'ddls.decay', 'every': 'ddls.decay_every',
                  'n_steps': 'ddls.n_steps', 'record_steps': 'ddls.record_steps'}
# The chains' keys: apart from the run's initialization (seed) and snapshot latents (seed + 1).
_SEED_OFFSET = 2


def schedule(config) -> mcmc.StepSchedule:
  """The step sizes of config.ddls."""
  c = config.ddls
  with errors.config_errors(_SCHEDULE_KEYS):
    return mcmc.StepSchedule(float(c.step_size), float(c.decay), int(c.decay_every))


def record_steps(config) -> tuple[int, ...]:
  """The recorded steps of the chain, 0 and the last always among them, in increasing order."""
  c = config.ddls
  steps = sorted({0, int(c.n_steps), *(int(k) for k in c.get('record_steps', ()))})
  with errors.config_errors(_SCHEDULE_KEYS):
    mcmc.get_langevin_sampler(int(c.n_steps), schedule(config), steps)  # checks the values
  return tuple(steps)


@dataclasses.dataclass(frozen=True)
class _Apply:
  """A network's apply as a function of (params, x); compares by value (the network does), so
  a `jax.tree_util.Partial` of it and new parameters reuses the compiled program."""
  network: Any

  def __call__(self, params, x):
    return self.network.apply({'params': params}, x)


def latent_energy_fn(generator, discriminator, g_params, d_params):
  """E(z) = |z|^2 / 2 - d(G(z)) of a GAN's networks and parameters (`mcmc.latent_energy`)."""
  return mcmc.latent_energy(jax.tree_util.Partial(_Apply(generator), g_params),
                            jax.tree_util.Partial(_Apply(discriminator), d_params))


class DDLSSampler:
  """`sampler(rng, g_params, d_params) -> (latents [R, B, L], images [R, B, H, W, C] in the
  data's range, logits [R, B])` for the R recorded steps: one compiled program per batch.

  The chains, G and D run with the batch sharded over `sharding` (parameters replicated).
  """

  def __init__(self, generator, discriminator, n_steps: int, step_schedule: mcmc.StepSchedule,
               steps: tuple[int, ...], batch_size: int, sharding=None):
    self.latent_shape = (batch_size, generator.latent_dim)
    self.steps = steps

    def run(rng, g_params, d_params):
      z0 = parallel.constrain(jax.random.normal(rng, self.latent_shape), sharding)
      energy = latent_energy_fn(generator, discriminator, g_params, d_params)
      _, chain = mcmc.langevin_chain(jax.random.fold_in(rng, 1), z0, mcmc.energy_grad(energy),
                                     n_steps, step_schedule, steps, sharding)
      flat = chain.reshape((-1, generator.latent_dim))
      x = generator.apply({'params': g_params}, flat)
      logits = discriminator.apply({'params': d_params}, x)
      return chain, x.reshape(chain.shape[:2] + x.shape[1:]), logits.reshape(chain.shape[:2])

    self._run = jax.jit(run)

  def __call__(self, rng, g_params, d_params):
    return self._run(rng, g_params, d_params)


def sample_gan(config, workdir: str, eval_folder: str = 'eval', num_samples: int = 64,
               step: int | None = None) -> str:
  """DDLS samples of the GAN run in `workdir` (checkpoint `step`, default the newest) into
  WORKDIR/<eval_folder>/ddls/ (see the module docstring). Returns that directory."""
  train_gan.require_gan_config(config)
  if 'ddls' not in config:
    raise errors.ConfigError('The GAN config has no `ddls` section (see configs/gan/digits.py).')
  if num_samples <= 0:
    raise errors.ConfigError(f'--num_samples={num_samples} must be positive.')
  mesh = parallel.make_mesh()
  c = config.ddls
  batch_size = min(int(c.batch_size), int(math.ceil(num_samples / mesh.size)) * mesh.size)
  if batch_size <= 0 or batch_size % mesh.size:
    raise errors.ConfigError(f'ddls.batch_size={c.batch_size} must be a positive multiple of '
                             f'the {mesh.size} devices.')
  steps = record_steps(config)
  generator, discriminator, state = train_gan.restore_gan(config, workdir, step)
  replicated = parallel.replicated(mesh)
  g_params = jax.device_put(state.g_ema_params if c.use_ema else state.g_params, replicated)
  d_params = jax.device_put(state.d_params, replicated)
  sampler = DDLSSampler(generator, discriminator, int(c.n_steps), schedule(config), steps,
                        batch_size, parallel.data_sharding(mesh))
  log.info('DDLS of the GAN at step %d: %d chains of %d Langevin steps (%s).',
           int(state.step), num_samples, int(c.n_steps), schedule(config))

  parts = []
  base = jax.random.PRNGKey(config.seed + _SEED_OFFSET)
  for i in range(int(math.ceil(num_samples / batch_size))):
    out = sampler(jax.random.fold_in(base, i), g_params, d_params)
    parts.append([parallel.gather(x) for x in out])  # collective: every host gathers
  latents, x, logits = (np.concatenate(p, axis=1)[:, :num_samples] for p in zip(*parts))
  pictures = data.get_data_inverse_scaler(config)(x)
  for k, value in zip(steps, logits.mean(axis=1)):
    log.info('DDLS step %d: mean discriminator logit %.4f', k, value)

  directory = os.path.join(workdir, eval_folder, 'ddls')
  if jax.process_index() != 0:
    return directory
  train_gan.save_grids({f'step_{k}': p[:64] for k, p in zip(steps, pictures)}, directory)
  rows, nrow = images.trajectory_rows(pictures)
  images.save_grid(rows, os.path.join(directory, 'chain.png'), nrow=nrow,
                   scale=max(1, 128 // pictures.shape[2]))
  files.write_npz(os.path.join(directory, 'samples.npz'), images=images.to_uint8(pictures),
                  latents=latents.astype(np.float32), logits=logits.astype(np.float32),
                  record_steps=np.asarray(steps, np.int32))
  log.info('Wrote %s.', directory)
  return directory
