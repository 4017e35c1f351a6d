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

  def log_noise_to_signal(self, t):
    """lambda(t) = log(std(t)^2 / mean_coeff(t)^2), increasing in t.

    Its derivative is g(t)^2 / std(t)^2 for all three SDEs here, the density (up to a
    constant) that likelihood-weighted training draws t from (`importance_sampled_times`).
    """
    raise NotImplementedError

  def time_at_log_noise_to_signal(self, lam):
    """The inverse of `log_noise_to_signal`."""
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

  def _time_at_integral(self, m):
    """t with int_0^t beta = m: the positive root of m = beta_min t + (beta_max - beta_min)
    t^2 / 2, written without the cancellation of the textbook formula at small m."""
    b0, db = self.beta_min, self.beta_max - self.beta_min
    return 2.0 * m / (b0 + jnp.sqrt(b0**2 + 2.0 * db * m))


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

  def log_noise_to_signal(self, t):
    # std^2 / mean^2 = (1 - e^{-m}) / e^{-m} = e^m - 1, m = int_0^t beta.
    return jnp.log(jnp.expm1(-2.0 * self.log_mean_coeff(t)))

  def time_at_log_noise_to_signal(self, lam):
    return self._time_at_integral(jax.nn.softplus(lam))

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

  def log_noise_to_signal(self, t):
    # std^2 / mean^2 = (1 - e^{-m})^2 / e^{-m}: log = m + 2 log(1 - e^{-m}).
    m = -2.0 * self.log_mean_coeff(t)
    return m + 2.0 * jnp.log(-jnp.expm1(-m))

  def time_at_log_noise_to_signal(self, lam):
    # With w = e^m: (w - 1)^2 / w = e^lam, so w - 1 = e^lam / 2 + sqrt(e^lam + e^{2 lam} / 4).
    half = 0.5 * jnp.exp(lam)
    return self._time_at_integral(jnp.log1p(half + jnp.sqrt(2.0 * half + half**2)))


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

  def log_noise_to_signal(self, t):
    return 2.0 * (math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min))

  def time_at_log_noise_to_signal(self, lam):
    return (0.5 * lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

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


def importance_times(sde: SDE, u, eps: float = 1e-5):
  """(t, w): the times with CDF value `u` (in [0, 1]) under q(t) proportional to
  g(t)^2 / std(t)^2 on [eps, T], and the weights w(t) = u(t) / q(t) for the uniform density
  u = 1 / (T - eps), so that E_q[w(t) f(t)] = E_u[f(t)].

  Song et al. 2021 (maximum likelihood training): with the likelihood weighting g(t)^2,
  drawing t from q removes the weighting's 1 / std(t)^2 blow-up near t = 0. q's CDF is
  affine in `log_noise_to_signal`, so t is its inverse at an affine map of u. For VE, q is
  uniform and the weights are 1.
  """
  u = jnp.asarray(u)
  dtype = jnp.promote_types(u.dtype, jnp.float32)
  lo = sde.log_noise_to_signal(jnp.asarray(eps, dtype))
  hi = sde.log_noise_to_signal(jnp.asarray(sde.T, dtype))
  t = jnp.clip(sde.time_at_log_noise_to_signal(lo + u * (hi - lo)), eps, sde.T)
  _, std = sde.marginal_prob(jnp.zeros_like(t), t)
  g2 = sde.sde(jnp.zeros_like(t), t)[1] ** 2
  return t, (hi - lo) / ((sde.T - eps) * g2 / std**2)


def importance_sampled_times(sde: SDE, rng, shape, eps: float = 1e-5):
  """`importance_times` at uniform draws: t ~ q(t) and its weights, each of `shape`."""
  return importance_times(sde, jax.random.uniform(rng, shape), eps)


def sampling_eps(sde: SDE) -> float:
  """The end time of sampling the paper and its reference code use for `sde` (their
  `sampling_eps`): 1e-5 for VE, 1e-3 for VP and sub-VP."""
  return 1e-5 if isinstance(sde, VESDE) else 1e-3
