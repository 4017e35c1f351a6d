"""Forward SDEs of score-based generative modeling: VE, VP and sub-VP.

Every SDE is a frozen dataclass of Python numbers, so it is hashable, can be closed
over or passed as a static argument to `jax.jit`, and holds no array state. Methods
are batched: `x: [B, ...]`, `t: [B]` (time in [0, T]); per-example scalars such as
the diffusion coefficient or the marginal std come back with shape `[B]`.

The reverse-time process of any SDE is `sde.reverse(score_fn)`, a `ReverseSDE`
with the same `sde` / `discretize` interface.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def batch_mul(a: jax.Array, x: jax.Array) -> jax.Array:
  """Multiplies per-example scalars `a: [B]` (or a scalar) into `x: [B, ...]`."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def _standard_normal_logp(z: jax.Array, scale: float) -> jax.Array:
  dim = math.prod(z.shape[1:])
  sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
  return -0.5 * dim * math.log(2 * math.pi * scale**2) - sq / (2 * scale**2)


class SDE:
  """Interface of a forward SDE dx = f(x, t) dt + g(t) dw on t in [0, T]."""

  N: int

  @property
  def T(self) -> float:
    return 1.0

  def sde(self, x, t):
    """Returns (drift f(x, t): like x, diffusion g(t): [B])."""
    raise NotImplementedError

  def marginal_prob(self, x, t):
    """Mean and std of the Gaussian perturbation kernel p_0t(x(t) | x(0) = x)."""
    raise NotImplementedError

  def prior_sampling(self, rng, shape):
    raise NotImplementedError

  def prior_logp(self, z):
    """Log-density of the prior p_T at `z: [B, ...]`, shape [B]."""
    raise NotImplementedError

  def discretize(self, x, t):
    """One step x_{i+1} = x_i + f_i(x_i) + G_i z_i of the discretized SDE.

    Euler-Maruyama with step 1/N unless the SDE has a discretization of its own.
    Returns (f: like x, G: [B]).
    """
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * math.sqrt(dt)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (or, with `probability_flow`, the probability-flow ODE)."""
    return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """dx = [f - g^2 score * (1/2 if ODE else 1)] dt + g dw-bar, integrated from T to 0."""

  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  @property
  def T(self) -> float:
    return self.forward.T

  @property
  def N(self) -> int:
    return self.forward.N

  def _weight(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x, t):
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    drift = drift - batch_mul(diffusion**2, score) * self._weight()
    if self.probability_flow:
      diffusion = jnp.zeros_like(diffusion)
    return drift, diffusion

  def discretize(self, x, t):
    f, G = self.forward.discretize(x, t)
    rev_f = f - batch_mul(G**2, self.score_fn(x, t)) * self._weight()
    rev_G = jnp.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


def _timestep(t, N, T):
  """Index of the discrete noise level for continuous time t (truncating, as the reference)."""
  return (t * (N - 1) / T).astype(jnp.int32)


class _LinearBetaSchedule(SDE):
  """beta(t) = beta_min + t (beta_max - beta_min), shared by VP and sub-VP.

  The discrete betas are DDPM's, linspace(beta_min / N, beta_max / N, N); the Langevin
  corrector and ancestral sampling use them for sub-VP as well as VP.
  """

  beta_min: float
  beta_max: float
  N: int

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t):
    """log alpha(t) = -int_0^t beta(s) ds / 2."""
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  @property
  def discrete_betas(self):
    return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

  @property
  def alphas(self):
    return 1.0 - self.discrete_betas

  @property
  def alphas_cumprod(self):
    return jnp.cumprod(self.alphas)

  @property
  def sqrt_alphas_cumprod(self):
    return jnp.sqrt(self.alphas_cumprod)

  @property
  def sqrt_1m_alphas_cumprod(self):
    return jnp.sqrt(1.0 - self.alphas_cumprod)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z, 1.0)


@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearBetaSchedule):
  """Variance preserving SDE: dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, beta linear.

  Its discretization is DDPM's Markov chain.
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = 1000

  def sde(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * batch_mul(beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return batch_mul(jnp.exp(lmc), x), jnp.sqrt(-jnp.expm1(2.0 * lmc))

  def discretize(self, x, t):
    """DDPM: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z."""
    i = _timestep(t, self.N, self.T)
    beta = self.discrete_betas[i]
    alpha = self.alphas[i]
    return batch_mul(jnp.sqrt(alpha), x) - x, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class subVPSDE(_LinearBetaSchedule):
  """sub-VP SDE: VP drift, diffusion sqrt(beta(t) (1 - exp(-2 int_0^t beta)))."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = 1000

  def sde(self, x, t):
    beta_t = self.beta(t)
    discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))
    return -0.5 * batch_mul(beta_t, x), jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return batch_mul(jnp.exp(lmc), x), -jnp.expm1(2.0 * lmc)


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
  """Variance exploding SDE: sigma(t) = sigma_min (sigma_max / sigma_min)^t, zero drift.

  Its discretization is SMLD's: noise levels geometric from sigma_min to sigma_max.
  As in the paper, `marginal_prob` has std sigma(t), not sqrt(sigma(t)^2 - sigma_min^2):
  the data are taken to be already perturbed at the smallest noise level sigma_min.
  """

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = 1000

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  @property
  def discrete_sigmas(self):
    return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

  def sde(self, x, t):
    log_ratio = math.log(self.sigma_max) - math.log(self.sigma_min)
    return jnp.zeros_like(x), self.sigma(t) * math.sqrt(2 * log_ratio)

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    return _standard_normal_logp(z, self.sigma_max)

  def discretize(self, x, t):
    """SMLD: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z."""
    i = _timestep(t, self.N, self.T)
    sigmas = self.discrete_sigmas
    sigma = sigmas[i]
    adjacent = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


SDES = {'vesde': VESDE, 'vpsde': VPSDE, 'subvpsde': subVPSDE}


def get_sde(name: str, **kwargs) -> SDE:
  """Builds an SDE by its config name ('vesde', 'vpsde', 'subvpsde')."""
  try:
    cls = SDES[name.lower()]
  except KeyError:
    raise ValueError(f'Unknown SDE {name!r}; expected one of {sorted(SDES)}.') from None
  return cls(**kwargs)


def sampling_eps(sde: SDE) -> float:
  """The end time of sampling the paper and its reference code use for `sde` (their
  `sampling_eps`): 1e-5 for VE, 1e-3 for VP and sub-VP."""
  return 1e-5 if isinstance(sde, VESDE) else 1e-3
