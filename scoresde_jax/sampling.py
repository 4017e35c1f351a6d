"""Samplers: predictor-corrector and probability-flow ODE.

Every sampler is `sampler(rng, score_fn) -> (samples, nfe)` and runs as one compiled
program. `score_fn(x, t) -> score` is any batched function (`x: [B, ...]`, `t: [B]`): a
network wrapped by `models.get_score_fn`, or an analytic score such as
`gmm.GaussianMixture.score_fn(sde)`. Network parameters reach the program as arguments,
not baked-in constants, when `score_fn` is a `jax.tree_util.Partial` (what
`models.get_score_fn` returns); plain functions work too.

Predictors and correctors are update functions registered by name, so configs pick them
(`config.sampling.predictor = 'reverse_diffusion'`) and users add their own with
`register_predictor` / `register_corrector`:

  predictor(rng, x, t, sde, score_fn, probability_flow) -> (x, x_mean)
  corrector(rng, x, t, sde, score_fn, snr, n_steps) -> (x, x_mean)

Each registration records how many score evaluations one update costs, so samplers
report the true number of function evaluations (NFE).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import sde_lib
from scoresde_jax.mcmc import langevin_update
from scoresde_jax.parallel import constrain
from scoresde_jax.sde_lib import batch_mul


@dataclasses.dataclass(frozen=True)
class _Update:
  fn: Callable
  nfe: Callable[[int], int]  # evaluations per call, given the corrector's n_steps


_PREDICTORS: dict[str, _Update] = {}
_CORRECTORS: dict[str, _Update] = {}


def register_predictor(name: str, nfe: int = 1):
  """Decorator registering `fn(rng, x, t, sde, score_fn, probability_flow) -> (x, x_mean)`."""

  def register(fn):
    _PREDICTORS[name] = _Update(fn, lambda n_steps: nfe)
    return fn

  return register


def register_corrector(name: str, nfe_per_step: int = 1):
  """Decorator registering `fn(rng, x, t, sde, score_fn, snr, n_steps) -> (x, x_mean)`."""

  def register(fn):
    _CORRECTORS[name] = _Update(fn, lambda n_steps: nfe_per_step * n_steps)
    return fn

  return register


def _lookup(table, kind, name):
  if name is None:
    name = 'none'
  try:
    return table[name.lower()]
  except KeyError:
    raise ValueError(f'Unknown {kind} {name!r}; registered: {sorted(table)}.') from None


def update_nfe(kind: str, name: str, n_steps: int = 1) -> int:
  """Score evaluations of one registered 'predictor' or 'corrector' update."""
  table = _PREDICTORS if kind == 'predictor' else _CORRECTORS
  return _lookup(table, kind, name).nfe(n_steps)


def get_predictor(name: str) -> Callable:
  return _lookup(_PREDICTORS, 'predictor', name).fn


def get_corrector(name: str) -> Callable:
  return _lookup(_CORRECTORS, 'corrector', name).fn


def as_partial(score_fn):
  """A jit-passable version of `score_fn`: its bound arguments become traced inputs."""
  if isinstance(score_fn, jax.tree_util.Partial):
    return score_fn
  return jax.tree_util.Partial(score_fn)


# ----------------------------------------------------------------------------------------
# Predictors


@register_predictor('euler_maruyama')
def euler_maruyama_predictor(rng, x, t, sde, score_fn, probability_flow=False):
  """One Euler-Maruyama step of the reverse SDE (or ODE), step size T / N."""
  dt = -sde.T / sde.N
  drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
  x_mean = x + drift * dt
  if probability_flow:
    return x_mean, x_mean
  z = jax.random.normal(rng, x.shape, x.dtype)
  return x_mean + batch_mul(diffusion * math.sqrt(-dt), z), x_mean


@register_predictor('reverse_diffusion')
def reverse_diffusion_predictor(rng, x, t, sde, score_fn, probability_flow=False):
  """The reverse of the SDE's own discretization (SMLD for VE, DDPM for VP)."""
  f, G = sde.reverse(score_fn, probability_flow).discretize(x, t)
  x_mean = x - f
  if probability_flow:
    return x_mean, x_mean
  z = jax.random.normal(rng, x.shape, x.dtype)
  return x_mean + batch_mul(G, z), x_mean


@register_predictor('ancestral_sampling')
def ancestral_sampling_predictor(rng, x, t, sde, score_fn, probability_flow=False):
  """Ancestral sampling of the SMLD (VE) or DDPM (VP) Markov chain."""
  if probability_flow:
    raise ValueError('Ancestral sampling has no probability-flow form; '
                     'use reverse_diffusion or euler_maruyama with probability_flow.')
  i = (t * (sde.N - 1) / sde.T).astype(jnp.int32)
  z = jax.random.normal(rng, x.shape, x.dtype)
  score = score_fn(x, t)
  if isinstance(sde, sde_lib.VESDE):
    sigmas = sde.discrete_sigmas
    sigma = sigmas[i]
    adjacent = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    x_mean = x + batch_mul(sigma**2 - adjacent**2, score)
    std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
    return x_mean + batch_mul(std, z), x_mean
  if isinstance(sde, sde_lib.VPSDE):
    beta = sde.discrete_betas[i]
    x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
    return x_mean + batch_mul(jnp.sqrt(beta), z), x_mean
  raise ValueError(f'Ancestral sampling is defined for VESDE and VPSDE, not {type(sde).__name__}.')


@register_predictor('none', nfe=0)
def no_predictor(rng, x, t, sde, score_fn, probability_flow=False):
  return x, x


# ----------------------------------------------------------------------------------------
# Correctors


def _langevin_alpha(sde, t):
  """alpha_i = 1 - beta_i of the DDPM chain for VP/sub-VP; 1 for VE."""
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    i = (t * (sde.N - 1) / sde.T).astype(jnp.int32)
    return sde.alphas[i]
  return jnp.ones_like(t)


def _global_mean_norm(v):
  """Mean over the (global) batch of per-example L2 norms."""
  return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


@register_corrector('langevin')
def langevin_corrector(rng, x, t, sde, score_fn, snr, n_steps):
  """Langevin MCMC with step size 2 alpha (snr |z| / |score|)^2 (norms batch-averaged)."""
  alpha = _langevin_alpha(sde, t)

  def step(i, carry):
    x, _ = carry
    grad = score_fn(x, t)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    ratio = snr * _global_mean_norm(noise) / _global_mean_norm(grad)
    step_size = 2 * alpha * ratio**2
    # mcmc's move with noise variance 2 step_size (exact in floats: halving undoes doubling).
    return langevin_update(x, grad, noise, 2 * step_size)

  return jax.lax.fori_loop(0, n_steps, step, (x, x))


@register_corrector('ald')
def annealed_langevin_corrector(rng, x, t, sde, score_fn, snr, n_steps):
  """Annealed Langevin dynamics of SMLD: step size 2 alpha (snr * sigma(t))^2."""
  alpha = _langevin_alpha(sde, t)
  std = sde.marginal_prob(x, t)[1]
  step_size = 2 * alpha * (snr * std) ** 2

  def step(i, carry):
    x, _ = carry
    grad = score_fn(x, t)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    return langevin_update(x, grad, noise, 2 * step_size)

  return jax.lax.fori_loop(0, n_steps, step, (x, x))


@register_corrector('none', nfe_per_step=0)
def no_corrector(rng, x, t, sde, score_fn, snr, n_steps):
  return x, x


# ----------------------------------------------------------------------------------------
# Samplers


def _identity(x):
  return x


@functools.partial(jax.tree_util.register_dataclass, data_fields=['known', 'mask'],
                   meta_fields=['to_latent', 'from_latent'])
@dataclasses.dataclass(frozen=True)
class Replacement:
  """Known coordinates that PC sampling keeps fixed: the "replacement" conditioning of
  inpainting and colorization (Song et al. 2021, App. I).

  In the latent basis `to_latent(x)` (an orthogonal linear map, `from_latent` its inverse;
  the identity for inpainting), coordinates where `mask` is 1 are known to equal `known`.
  After every corrector and predictor update the PC loop overwrites them with the data
  pushed through the forward kernel to the current time, alpha(t) known + sigma(t) z, and
  the final sample holds `known` itself there.

  known, mask: `[B, ...]` like the samples (`known` is ignored where `mask` is 0).
  A pytree: `known` and `mask` are traced inputs of the compiled sampler.
  """
  known: jax.Array
  mask: jax.Array
  to_latent: Callable = _identity
  from_latent: Callable = _identity

  def exact(self, x):
    """`x` with its known coordinates set to `known`."""
    latent = self.to_latent(x)
    return self.from_latent(latent * (1 - self.mask) + self.known * self.mask)

  def noised(self, rng, x, t, sde):
    """`x` with its known coordinates set to a sample of p_t(x(t) | x(0) = known)."""
    mean, std = sde.marginal_prob(self.known, t)
    noisy = mean + batch_mul(std, jax.random.normal(rng, self.known.shape, self.known.dtype))
    latent = self.to_latent(x)
    return self.from_latent(latent * (1 - self.mask) + noisy * self.mask)


def get_pc_sampler(sde: sde_lib.SDE, shape: Sequence[int], predictor: str = 'reverse_diffusion',
                   corrector: str = 'langevin', snr: float = 0.16, n_steps: int = 1,
                   probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3,
                   trajectory_steps: Sequence[int] | None = None, sharding=None):
  """Predictor-corrector sampler over N = sde.N time steps linspace(T, eps, N).

  Each step runs the corrector, then the predictor. With `denoise`, the result is the last
  predictor's mean (no noise added at the final step).

  Args:
    sde: the forward SDE.
    shape: shape of the batch of samples, `[B, ...]`.
    predictor, corrector: registered names ('none' to switch one off).
    snr: signal-to-noise ratio of the (annealed) Langevin corrector.
    n_steps: corrector steps per time step.
    probability_flow: predict with the probability-flow ODE instead of the reverse SDE.
    eps: final time; 1e-3 for VP/sub-VP and 1e-5 for VE in the paper.
    trajectory_steps: indices i in [0, N) at which to also return the current mean
      (`x_mean` after step i), for pictures of the diffusion process.
    sharding: optional `jax.sharding.Sharding` for the batch (e.g. NamedSharding over the
      'data' axis); the sample stays sharded through the whole loop.

  Returns:
    `sampler(rng, score_fn, replacement=None) -> (samples, nfe)`, or
    `-> (samples, nfe, trajectory)` with `trajectory: [len(trajectory_steps), *shape]` when
    trajectory_steps is given. `replacement` (a `Replacement`) conditions the samples on
    known coordinates (inpainting, colorization).
  """
  predictor_update = _lookup(_PREDICTORS, 'predictor', predictor)
  corrector_update = _lookup(_CORRECTORS, 'corrector', corrector)
  if probability_flow and predictor.lower() == 'ancestral_sampling':
    raise ValueError('Ancestral sampling has no probability-flow form.')
  if not 0.0 < eps < sde.T:
    raise ValueError(f'eps must lie in (0, T={sde.T}), got {eps!r}.')
  shape = tuple(shape)
  num_steps = sde.N
  nfe = num_steps * (update_nfe('predictor', predictor, n_steps)
                     + update_nfe('corrector', corrector, n_steps))
  record = np.full((num_steps,), -1, np.int32)
  if trajectory_steps is not None:
    steps = [int(i) for i in trajectory_steps]
    if any(not 0 <= i < num_steps for i in steps):
      raise ValueError(f'trajectory_steps must lie in [0, {num_steps}); got {steps}.')
    record[steps] = np.arange(len(steps))

  @jax.jit
  def run(rng, score_fn, replacement):
    rng, prior_rng = jax.random.split(rng)
    x = constrain(sde.prior_sampling(prior_rng, shape), sharding)
    if replacement is not None:
      x = replacement.exact(x)
    timesteps = jnp.linspace(sde.T, eps, num_steps)
    traj = None if trajectory_steps is None else jnp.zeros((len(trajectory_steps),) + shape, x.dtype)

    def body(i, carry):
      x, x_mean, traj = carry
      t = jnp.full((shape[0],), timesteps[i])
      step_rng = jax.random.fold_in(rng, i)
      c_rng, p_rng = jax.random.split(step_rng)
      if replacement is not None:
        # Keys of their own: the updates draw the same noise with or without a replacement.
        c_fix, p_fix = jax.random.split(jax.random.fold_in(step_rng, 1))
      x, x_mean = corrector_update.fn(c_rng, x, t, sde, score_fn, snr, n_steps)
      if replacement is not None:
        x = replacement.noised(c_fix, x, t, sde)
      x, x_mean = predictor_update.fn(p_rng, x, t, sde, score_fn, probability_flow)
      if replacement is not None:
        # x_mean keeps the unknown part's mean (no noise in the last step) for `denoise`.
        x, x_mean = replacement.noised(p_fix, x, t, sde), replacement.exact(x_mean)
      x, x_mean = constrain(x, sharding), constrain(x_mean, sharding)
      if traj is not None:
        slot = jnp.asarray(record)[i]
        traj = jax.lax.cond(slot >= 0, lambda: traj.at[slot].set(x_mean), lambda: traj)
      return x, x_mean, traj

    x, x_mean, traj = jax.lax.fori_loop(0, num_steps, body, (x, x, traj))
    out = x_mean if denoise else x
    if replacement is not None:
      out = replacement.exact(out)
    return out if traj is None else (out, traj)

  def sampler(rng, score_fn, replacement: Replacement | None = None):
    if replacement is not None and tuple(replacement.known.shape) != shape:
      raise ValueError(f'Known data of shape {tuple(replacement.known.shape)}; the sampler was '
                       f'built for {shape}.')
    result = run(rng, as_partial(score_fn), replacement)
    if trajectory_steps is None:
      return result, nfe
    return result[0], nfe, result[1]

  return sampler


# ----------------------------------------------------------------------------------------
# Probability-flow ODE


# diffrax's solver classes by method name. diffrax is imported when an ODE is solved: at
# module level it was a second of every start, training included.
_ODE_SOLVERS = {'dopri5': 'Dopri5', 'tsit5': 'Tsit5', 'dopri8': 'Dopri8', 'bosh3': 'Bosh3',
                'heun': 'Heun'}


def _ode_solver(method: str):
  import diffrax  # pylint: disable=import-outside-toplevel
  check_ode_method(method)
  return getattr(diffrax, _ODE_SOLVERS[method.lower()])()


def check_ode_method(method: str):
  """Raises ValueError, naming the known solvers, unless `method` is one of them."""
  if str(method).lower() not in _ODE_SOLVERS:
    raise ValueError(f'Unknown ODE method {method!r}; expected one of {sorted(_ODE_SOLVERS)}.')


def _solver_nfe(solver, stats) -> jax.Array:
  """Score evaluations of an adaptive diffrax solve.

  First-same-as-last tableaus (Dopri5, Tsit5, Bosh3, Dopri8) cost one evaluation at the
  start and one per further stage on every step, accepted or rejected; others (Heun) cost
  one per stage. Checked against counted calls in tests/test_sampling.py.
  """
  stages = len(solver.tableau.c) + 1
  if solver.tableau.fsal:
    return 1 + (stages - 1) * stats['num_steps']
  return stages * stats['num_steps']


def solve_probability_flow(sde, score_fn, x, t0: float, t1: float, *, rtol=1e-5, atol=1e-5,
                           method='dopri5', max_steps: int = 16384, extra=None):
  """Integrates the probability-flow ODE from t0 to t1 (either direction) with diffrax.

  `extra`, if given, is `(init, fn)`: an additional state integrated alongside x with
  derivative `fn(x, t, drift_fn)`; used for the log-likelihood. Returns (x(t1), extra(t1), nfe).
  """
  import diffrax  # pylint: disable=import-outside-toplevel
  solver = _ode_solver(method)
  batch = x.shape[0]

  def drift_fn(x, t):
    return sde.reverse(score_fn, probability_flow=True).sde(x, jnp.full((batch,), t))[0]

  if extra is None:
    vector_field = lambda t, y, _: drift_fn(y, t)
    y0 = x
  else:
    extra_init, extra_fn = extra
    vector_field = lambda t, y, _: (drift_fn(y[0], t), extra_fn(y[0], t, drift_fn))
    y0 = (x, extra_init)
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), solver, t0=t0, t1=t1, dt0=None, y0=y0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
      saveat=diffrax.SaveAt(t1=True))
  y1 = jax.tree_util.tree_map(lambda leaf: leaf[0], sol.ys)
  nfe = _solver_nfe(solver, sol.stats)
  if extra is None:
    return y1, None, nfe
  return y1[0], y1[1], nfe


def get_ode_sampler(sde: sde_lib.SDE, shape: Sequence[int], denoise: bool = False,
                    rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3,
                    method: str = 'dopri5', sharding=None):
  """Samples by solving the probability-flow ODE from T to eps with an adaptive solver.

  Returns `sampler(rng, score_fn, z=None) -> (samples, nfe)`; `z: shape` decodes a given
  latent instead of a prior sample. `nfe` is a traced count (a scalar array): the solver
  adapts its steps. With `denoise`, one reverse-diffusion step at eps removes the last noise.
  """
  shape = tuple(shape)
  _ode_solver(method)

  @jax.jit
  def run(rng, score_fn, z):
    rng, prior_rng = jax.random.split(rng)
    x = sde.prior_sampling(prior_rng, shape) if z is None else z
    x = constrain(x, sharding)
    x, _, nfe = solve_probability_flow(sde, score_fn, x, sde.T, eps, rtol=rtol, atol=atol,
                                       method=method)
    if denoise:
      _, x = reverse_diffusion_predictor(rng, x, jnp.full((shape[0],), eps), sde, score_fn)
      nfe = nfe + 1
    return constrain(x, sharding), nfe

  def sampler(rng, score_fn, z=None):
    if z is not None and tuple(z.shape) != shape:
      raise ValueError(f'Latent z has shape {tuple(z.shape)}, expected {shape}.')
    return run(rng, as_partial(score_fn), z)

  return sampler


def get_ode_encoder(sde: sde_lib.SDE, rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3,
                    method: str = 'dopri5'):
  """Maps data to latents: the probability-flow ODE from eps to T.

  Returns `encode(score_fn, x) -> (z, nfe)`; `get_ode_sampler(...)(rng, score_fn, z)`
  (with `denoise=False`) is its inverse.
  """
  _ode_solver(method)

  @jax.jit
  def run(score_fn, x):
    z, _, nfe = solve_probability_flow(sde, score_fn, x, eps, sde.T, rtol=rtol, atol=atol,
                                       method=method)
    return z, nfe

  def encode(score_fn, x):
    return run(as_partial(score_fn), x)

  return encode
