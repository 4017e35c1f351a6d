"""Unadjusted Langevin MCMC on an energy, and the latent energy of a GAN (DDLS).

One move of the unadjusted Langevin algorithm (ULA) on a density p = exp(-E) / Z:

  z' = z - (eps / 2) grad E(z) + sqrt(eps) n,    n ~ N(0, I),

`eps` being the variance of the injected noise. The SDE samplers' Langevin correctors make the
same move written with the score, x + s score + sqrt(2 s) n, i.e. eps = 2 s; both call
`langevin_update`.

Discriminator-driven latent sampling (Che et al. 2020, "Your GAN is secretly an energy-based
model and you should use discriminator driven latent sampling") runs this chain in the latent
space of a GAN on E(z) = -log p0(z) - d(G(z)), p0 = N(0, I), d the discriminator's logit
(`latent_energy`): the pushforward by G of exp(-E) is p_g(x) exp(d(x)), which is the data
density when d is the optimal discriminator's logit log p_data(x) - log p_g(x).

Everything here is per example: energies are `[B]`, the gradient is that of their sum, and no
operation mixes examples, so a batch sharded over the 'data' axis stays sharded through the
whole chain. A built chain (`get_langevin_sampler`) runs as one compiled program (a
`lax.fori_loop`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax.errors import ArgumentError
from scoresde_jax.parallel import constrain


def _per_example(a, x):
  """A scalar or per-example `a: [B]` shaped to broadcast against `x: [B, ...]`."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def langevin_update(x, score, noise, eps):
  """One ULA move: returns (x + (eps / 2) score + sqrt(eps) noise, its mean without noise).

  x, score (grad log p = -grad E), noise (standard normal): [B, ...]; eps: a scalar or [B],
  the variance of the injected noise.
  """
  x_mean = x + _per_example(eps / 2, x) * score
  return x_mean + _per_example(jnp.sqrt(eps), x) * noise, x_mean


@dataclasses.dataclass(frozen=True)
class StepSchedule:
  """Step sizes eps_k = eps * factor ** (k // every) of the moves k = 0, 1, ...

  every = 0 (or factor = 1) keeps eps constant. Frozen and hashable: a schedule is part of a
  built chain, not a traced input.
  """
  eps: float
  factor: float = 1.0
  every: int = 0

  def __post_init__(self):
    if not (math.isfinite(self.eps) and self.eps > 0):
      raise ArgumentError('eps', 'the Langevin step size {name}={value!r} must be a positive '
                          'number.', value=self.eps)
    if not (math.isfinite(self.factor) and self.factor > 0):
      raise ArgumentError('factor', 'the step-size decay factor {name}={value!r} must be a '
                          'positive number.', value=self.factor)
    if int(self.every) != self.every or self.every < 0:
      raise ArgumentError('every', 'the step-size decay period {name}={value!r} must be a '
                          'whole number of steps >= 0 (0: constant).', value=self.every)

  def __call__(self, k):
    """The step size of move k (0-based; an int or a traced integer), float32."""
    if self.every == 0 or self.factor == 1.0:
      return jnp.float32(self.eps)
    return jnp.float32(self.eps) * jnp.float32(self.factor) ** (k // self.every)

  def values(self, n_steps: int) -> np.ndarray:
    """The step sizes of moves 0 .. n_steps - 1."""
    return np.asarray(jax.vmap(self)(jnp.arange(n_steps)))


def constant(eps: float) -> StepSchedule:
  return StepSchedule(eps)


def decay(eps: float, factor: float, every: int) -> StepSchedule:
  """eps, multiplied by `factor` after every `every` moves."""
  return StepSchedule(eps, factor, every)


def energy_grad(energy_fn: Callable) -> Callable:
  """grad E of a batched energy `energy_fn(z) -> [B]`: the gradient of the sum, which is each
  example's own gradient since examples do not interact."""
  return jax.grad(lambda z: jnp.sum(energy_fn(z)))


def _record_slots(n_steps: int, record_steps: Sequence[int] | None) -> np.ndarray | None:
  """slots[k]: where the state after k moves goes in the recorded chain (-1: nowhere)."""
  if record_steps is None:
    return None
  steps = [int(k) for k in record_steps]
  if any(not 0 <= k <= n_steps for k in steps) or len(set(steps)) != len(steps):
    raise ArgumentError('record_steps', '{name} must be distinct steps in [0, {n}] (0: the '
                        'initial state); got {steps}.', n=n_steps, steps=steps)
  slots = np.full((n_steps + 1,), -1, np.int32)
  slots[steps] = np.arange(len(steps))
  return slots


def langevin_chain(rng, z0, grad_fn: Callable, n_steps: int, schedule: StepSchedule,
                   record_steps: Sequence[int] | None = None, sharding=None):
  """`n_steps` ULA moves from `z0: [B, ...]` on the energy whose gradient is `grad_fn`.

  The noise of move k is drawn with fold_in(rng, k), so a chain is a function of (rng, z0)
  alone. Traceable: call it inside `jit` (as `get_langevin_sampler` does) for one program.

  Returns:
    z after n_steps moves, or (z, chain) with `chain: [len(record_steps), B, ...]`, the state
    after k moves for each k of `record_steps`, in their order (k = 0: z0).
  """
  slots = _record_slots(n_steps, record_steps)
  z = constrain(z0, sharding)
  chain = None

  def recorded(chain, k, z):
    slot = jnp.asarray(slots)[k]
    return jax.lax.cond(slot >= 0, lambda: chain.at[slot].set(z), lambda: chain)

  if slots is not None:
    chain = recorded(jnp.zeros((len(record_steps),) + z.shape, z.dtype), 0, z)

  def body(k, carry):
    z, chain = carry
    noise = jax.random.normal(jax.random.fold_in(rng, k), z.shape, z.dtype)
    z, _ = langevin_update(z, -grad_fn(z), noise, schedule(k).astype(z.dtype))
    z = constrain(z, sharding)
    if chain is not None:
      chain = recorded(chain, k + 1, z)
    return z, chain

  z, chain = jax.lax.fori_loop(0, n_steps, body, (z, chain))
  return z if chain is None else (z, chain)


def _as_partial(fn):
  """Bound arguments of a `jax.tree_util.Partial` (network parameters) stay traced inputs."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def get_langevin_sampler(n_steps: int, schedule: StepSchedule,
                         record_steps: Sequence[int] | None = None, sharding=None):
  """A compiled ULA chain: `sampler(rng, z0, energy_fn=None, *, grad_fn=None)`.

  Give either `energy_fn(z) -> [B]` (differentiated by `jax.grad` of the sum) or
  `grad_fn(z) -> grad E(z)`. A `jax.tree_util.Partial` passes its bound arguments (network
  parameters) as inputs of the program, so new parameters do not recompile it.

  Returns what `langevin_chain` returns: z, or (z, chain) with `record_steps`.
  """
  if int(n_steps) != n_steps or n_steps < 0:
    raise ArgumentError('n_steps', 'the number of Langevin steps {name}={value!r} must be a '
                        'whole number >= 0.', value=n_steps)
  if not isinstance(schedule, StepSchedule):
    raise TypeError(f'schedule must be a StepSchedule, got {type(schedule).__name__}.')
  n_steps = int(n_steps)
  _record_slots(n_steps, record_steps)  # its mistakes now, not at the first call
  record_steps = None if record_steps is None else tuple(int(k) for k in record_steps)

  def run(rng, z0, fn, is_energy):
    grad_fn = energy_grad(fn) if is_energy else fn
    return langevin_chain(rng, z0, grad_fn, n_steps, schedule, record_steps, sharding)

  run = jax.jit(run, static_argnums=3)

  def sampler(rng, z0, energy_fn: Callable | None = None, *, grad_fn: Callable | None = None):
    if (energy_fn is None) == (grad_fn is None):
      raise TypeError('Give exactly one of energy_fn and grad_fn.')
    is_energy = energy_fn is not None
    return run(rng, z0, _as_partial(energy_fn if is_energy else grad_fn), is_energy)

  return sampler


def latent_energy(generator_fn: Callable, logit_fn: Callable) -> Callable:
  """DDLS's latent energy E(z) = |z|^2 / 2 - d(G(z)) (= -log N(z; 0, I) - d(G(z)) + const).

  generator_fn: z [B, ...] -> x [B, ...]; logit_fn: x -> [B] the discriminator's logit (its
  estimate of log p_data(x) - log p_g(x)). Returns `energy_fn(z) -> [B]` as a
  `jax.tree_util.Partial`: the bound arguments of functions given as Partials (network
  parameters) stay traced inputs of a compiled chain.
  """
  return jax.tree_util.Partial(_latent_energy, _as_partial(generator_fn), _as_partial(logit_fn))


def _latent_energy(generator_fn, logit_fn, z):
  prior = 0.5 * jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
  return prior - jnp.reshape(logit_fn(generator_fn(z)), (z.shape[0],))
