"""Few-step samplers for the probability-flow ODE: DDIM, DPM-Solver++ (2M, 3M), EDM Heun.

All of them work on any of our SDEs through the Gaussian perturbation kernel
x_t = alpha(t) x_0 + sigma(t) z, read from `sde.marginal_prob`:

  * VP:     alpha = exp(log_mean_coeff(t)), sigma = sqrt(1 - alpha^2)
  * sub-VP: alpha = exp(log_mean_coeff(t)), sigma = 1 - alpha^2
  * VE:     alpha = 1,                     sigma = sigma_min (sigma_max / sigma_min)^t

and the half log-SNR lambda(t) = log(alpha / sigma), which decreases in t, so every
noise level has a unique time t(lambda) (closed forms below). Two views of one ODE:

  * DPM-Solver++ (Lu et al. 2022) integrates in lambda with the data prediction
    x0(x, t) = (x + sigma^2 score(x, t)) / alpha  (Tweedie's formula). Its exact solution
        x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0 dlambda
    is approximated by Taylor-expanding x0 in lambda; the multistep variants estimate
    the derivatives of x0 from the previous steps' evaluations (one NFE per step).
  * EDM (Karras et al. 2022) rescales x_hat = x / alpha, which is the data plus noise of
    std sigma_hat = sigma / alpha = exp(-lambda): a VE process in sigma_hat whatever the
    SDE. Its ODE dx_hat/dsigma_hat = (x_hat - x0) / sigma_hat is integrated with Heun's
    method (two NFE per step), optionally with stochastic "churn" (noise added, then
    the ODE step taken from the raised noise level).

The score network is always called as `score_fn(x, t)` with x on the SDE's own scale and
t: [B] in [eps, T], so every existing `score_fn` works unchanged.

Time-step schedules (all mapped back to t): 'uniform' (uniform in t), 'logsnr'
(uniform in lambda), 'edm' (EDM's rho-schedule on sigma_hat, rho = 7).

A sampler is `sampler(rng, score_fn, x_init=None) -> (samples, nfe)`: one jit-compiled
program (the time loop is a `lax.fori_loop`; `score_fn` enters as a
`jax.tree_util.Partial`, so bound network parameters are traced inputs, as in
`sampling`); `nfe` counts the score evaluations actually made. Every builder takes
`sharding=` (a `jax.sharding.Sharding` for the batch). `x_init: [B, ...]` replaces the prior sample x(T) (used to check
determinism and for latent interpolation).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import parallel, sde_lib

SCHEDULES = ('uniform', 'logsnr', 'edm')


def _softplus(x, xp):
  return xp.logaddexp(0.0, x)


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """alpha(t), sigma(t), lambda(t) = log(alpha / sigma) of an SDE and the inverse t(lambda).

  Methods are elementwise on arrays of any shape. With `xp=np` they compute in float64 on
  the host, which is how solver coefficients are precomputed (the differences of nearby
  lambdas lose digits in float32); with `xp=jnp` (default) they trace into programs.
  """

  sde: sde_lib.SDE

  def __post_init__(self):
    if not isinstance(self.sde, (sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.VESDE)):
      raise ValueError(f'Fast solvers need a VPSDE, subVPSDE or VESDE; got {type(self.sde).__name__}.')

  def alpha_sigma(self, t, xp=jnp):
    """alpha(t) and sigma(t) of x_t = alpha x_0 + sigma z (as `sde.marginal_prob`)."""
    sde = self.sde
    if isinstance(sde, sde_lib.VESDE):
      return xp.ones_like(t), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    log_alpha = sde.log_mean_coeff(t)
    var_or_std = -xp.expm1(2.0 * log_alpha)  # 1 - alpha^2
    if isinstance(sde, sde_lib.VPSDE):
      return xp.exp(log_alpha), xp.sqrt(var_or_std)
    return xp.exp(log_alpha), var_or_std  # sub-VP: sigma = 1 - alpha^2

  def lam(self, t, xp=jnp):
    alpha, sigma = self.alpha_sigma(t, xp)
    return xp.log(alpha) - xp.log(sigma)

  def sigma_hat(self, t, xp=jnp):
    """EDM noise level sigma / alpha = exp(-lambda)."""
    alpha, sigma = self.alpha_sigma(t, xp)
    return sigma / alpha

  def t_of_lambda(self, lam, xp=jnp):
    """Inverse of lambda(t) (closed form for each SDE)."""
    sde = self.sde
    if isinstance(sde, sde_lib.VESDE):
      # lambda = -log sigma(t), log sigma linear in t.
      return (-lam - math.log(sde.sigma_min)) / (math.log(sde.sigma_max) - math.log(sde.sigma_min))
    if isinstance(sde, sde_lib.VPSDE):
      # alpha^2 / (1 - alpha^2) = e^{2 lambda}  =>  log alpha = -softplus(-2 lambda) / 2.
      log_alpha = -0.5 * _softplus(-2.0 * lam, xp)
    else:
      # sub-VP: alpha / (1 - alpha^2) = e^lambda; the positive root of
      # e^lambda alpha^2 + alpha - e^lambda = 0 is alpha = 1 / (u + sqrt(1 + u^2)) with
      # u = e^{-lambda} / 2, i.e. log alpha = -asinh(u): accurate where alpha ~ 1.
      log_alpha = -xp.arcsinh(0.5 * xp.exp(-lam))
    # log_mean_coeff(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2 = log_alpha:
    # the positive root of a t^2 + b t + c = 0, written as -2c / (b + sqrt(b^2 - 4ac)),
    # which stays accurate for small t and for beta_max == beta_min.
    a = 0.25 * (sde.beta_max - sde.beta_min)
    b = 0.5 * sde.beta_min
    return -2.0 * log_alpha / (b + xp.sqrt(b**2 - 4.0 * a * log_alpha))

  def t_of_sigma_hat(self, sigma_hat, xp=jnp):
    return self.t_of_lambda(-xp.log(sigma_hat), xp)


def get_time_steps(sde: sde_lib.SDE, steps: int, schedule: str = 'logsnr', eps: float = 1e-3,
                   rho: float = 7.0) -> np.ndarray:
  """Decreasing times t_0 = T > t_1 > ... > t_steps = eps: float64 numpy [steps + 1].

  'uniform': uniform in t; 'logsnr': uniform in lambda = log(alpha / sigma);
  'edm': sigma_hat_i = (s_max^(1/rho) + i / steps (s_min^(1/rho) - s_max^(1/rho)))^rho
  with sigma_hat = sigma / alpha (EDM's schedule), each mapped back to t.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f'Unknown time-step schedule {schedule!r}; expected one of {SCHEDULES}.')
  if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
    raise ValueError(f'steps must be a positive integer, got {steps!r}.')
  if not 0.0 < eps < sde.T:
    raise ValueError(f'eps must lie in (0, T={sde.T}), got {eps!r}.')
  ns = NoiseSchedule(sde)
  frac = np.linspace(0.0, 1.0, int(steps) + 1)
  ends = np.array([sde.T, eps], np.float64)
  if schedule == 'uniform':
    t = sde.T + frac * (eps - sde.T)
  elif schedule == 'logsnr':
    lam_T, lam_eps = ns.lam(ends, np)
    t = ns.t_of_lambda(lam_T + frac * (lam_eps - lam_T), np)
  else:
    s_max, s_min = ns.sigma_hat(ends, np) ** (1.0 / rho)
    t = ns.t_of_sigma_hat((s_max + frac * (s_min - s_max)) ** rho, np)
  # Pin the end points exactly (the inverse map is exact only up to rounding).
  t[0], t[-1] = sde.T, eps
  return t


def _data_prediction(score_fn, x, t, alpha, sigma):
  """x0(x, t) = (x + sigma^2 score(x, t)) / alpha for scalars t, alpha, sigma; x: [B, ...]."""
  vec_t = jnp.full((x.shape[0],), t, jnp.float32)
  return (x + sigma**2 * score_fn(x, vec_t)) / alpha


def _check_shape(shape):
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f'shape must be [batch, ...] with positive sizes, got {shape}.')
  return shape


def _as_partial(score_fn):
  """`score_fn` as a pytree (`jax.tree_util.Partial`): arrays it binds (network
  parameters) enter the compiled program as arguments instead of baked-in constants."""
  if isinstance(score_fn, jax.tree_util.Partial):
    return score_fn
  return jax.tree_util.Partial(score_fn)


def _make_sampler(sde, shape, run, sharding=None):
  """Wraps `run(rng, score_fn, x, constrain) -> (x, nfe)` into the public sampler, one
  compiled program (jit caches it per score function and input shapes)."""
  constrain = functools.partial(parallel.constrain, sharding=sharding)

  @jax.jit
  def _compiled(rng, score_fn, x_init):
    if x_init is None:
      rng, prior_rng = jax.random.split(rng)
      x_init = sde.prior_sampling(prior_rng, shape)
    x, nfe = run(rng, score_fn, constrain(x_init), constrain)
    return constrain(x), nfe

  def sampler(rng, score_fn, x_init=None):
    """rng: PRNG key; score_fn(x, t); x_init: optional [B, ...] sample of the prior.

    Returns (samples: `shape`, nfe: int32 scalar, score evaluations made).
    """
    if x_init is not None and tuple(x_init.shape) != shape:
      raise ValueError(f'x_init has shape {tuple(x_init.shape)}, the sampler was built for {shape}.')
    return _compiled(rng, _as_partial(score_fn), x_init)

  return sampler


def _multistep_coefficients(sde, steps, order, schedule, eps, lower_order_final):
  """Float64 coefficients of the multistep DPM-Solver++ update, one row per step i:

    x_{i+1} = ratio_i x_i + c0_i m0 + c1_i (m0 - m1) + c2_i (m1 - m2),

  with m0, m1, m2 the data predictions at t_i, t_{i-1}, t_{i-2}. Derivation: with
  h = lambda_{i+1} - lambda_i, the exact solution is
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} int_0^h e^{u - h} x0(lambda_i + u) du,
  and the Taylor expansion x0 = m0 + u d1 + u^2/2 d2 integrates to
    alpha_{i+1} (-phi1 m0 + h phi2 d1 - h^2 phi3 d2),
  phi1 = e^{-h} - 1, phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2. Order 1 drops d1, d2
  (DDIM). Order 2 is DPM-Solver++(2M): -phi1 (m0 + (m0 - m1) / (2 r0)), r0 = h_{i-1} / h.
  Order 3 estimates h d1 and h^2 d2 from divided differences of m0, m1, m2 (errors
  O(h^3)): with D0 = (m0 - m1) / r0, D1 = (m1 - m2) / r1, r1 = h_{i-2} / h,
    h d1 = D0 + r0 / (r0 + r1) (D0 - D1),   h^2 d2 = 2 (D0 - D1) / (r0 + r1).
  Returns (ts, alphas, sigmas, ratio, c0, c1, c2); the first three have steps + 1 entries.
  """
  ns = NoiseSchedule(sde)
  ts = get_time_steps(sde, steps, schedule, eps)
  alphas, sigmas = ns.alpha_sigma(ts, np)
  lams = np.log(alphas) - np.log(sigmas)
  if np.any(np.diff(lams) <= 0):
    raise ValueError(f'{steps} steps from T to eps={eps} are too many for the noise schedule: '
                     'consecutive noise levels coincide.')
  # Order used at each step: limited by the history, and optionally at the end.
  orders = [min(order, i + 1) for i in range(steps)]
  if lower_order_final and steps < 10:
    orders = [min(k, steps - i) for i, k in enumerate(orders)]
  ratio, c0, c1, c2 = (np.zeros(steps) for _ in range(4))
  for i in range(steps):
    h = lams[i + 1] - lams[i]
    a = alphas[i + 1]
    phi1 = np.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    ratio[i] = sigmas[i + 1] / sigmas[i]
    c0[i] = -a * phi1
    if orders[i] == 2:
      r0 = (lams[i] - lams[i - 1]) / h
      c1[i] = -0.5 * a * phi1 / r0
    elif orders[i] == 3:
      r0 = (lams[i] - lams[i - 1]) / h
      r1 = (lams[i - 1] - lams[i - 2]) / h
      c1[i] = a * (phi2 * (1.0 + r0 / (r0 + r1)) - 2.0 * phi3 / (r0 + r1)) / r0
      c2[i] = a * (-phi2 * r0 / (r0 + r1) + 2.0 * phi3 / (r0 + r1)) / r1
  return ts, alphas, sigmas, ratio, c0, c1, c2


def get_dpm_solver_sampler(sde: sde_lib.SDE, shape, steps: int, order: int = 2,
                           schedule: str = 'logsnr', eps: float = 1e-3,
                           denoise_to_zero: bool = False,
                           lower_order_final: bool = True, sharding=None) -> Callable:
  """Multistep DPM-Solver++ of order 1 (= DDIM), 2 (2M) or 3 (3M), data prediction.

  One score evaluation per step (plus one with `denoise_to_zero`, which returns the
  final data prediction x0(x(eps), eps) instead of x(eps)). The first steps use the
  orders that the available history allows; with `lower_order_final` and fewer than
  10 steps the last steps drop to lower orders too, which avoids the unstable
  high-order extrapolation over the long last steps of a few-step schedule.

  Args:
    sde: VPSDE, subVPSDE or VESDE.
    shape: [B, ...] of the samples.
    steps: number of solver steps from T to eps.
    order: 1, 2 or 3.
    schedule: 'logsnr' (default), 'uniform' or 'edm' (see `get_time_steps`).
    sharding: optional `jax.sharding.Sharding` of the batch (as `sampling.get_pc_sampler`).
  Returns:
    sampler(rng, score_fn, x_init=None) -> (samples, nfe).
  """
  if order not in (1, 2, 3):
    raise ValueError(f'DPM-Solver++ order must be 1, 2 or 3, got {order!r}.')
  shape = _check_shape(shape)
  coefs = _multistep_coefficients(sde, steps, order, schedule, eps, lower_order_final)
  ts, alphas, sigmas, ratio, c0, c1, c2 = (jnp.asarray(c, jnp.float32) for c in coefs)

  def run(rng, score_fn, x, constrain):
    del rng  # deterministic

    def body(i, carry):
      x, m1, m2, nfe = carry
      m0 = _data_prediction(score_fn, x, ts[i], alphas[i], sigmas[i])
      x = ratio[i] * x + c0[i] * m0 + c1[i] * (m0 - m1) + c2[i] * (m1 - m2)
      return constrain(x), m0, m1, nfe + 1

    zeros = jnp.zeros_like(x)
    x, _, _, nfe = jax.lax.fori_loop(0, steps, body, (x, zeros, zeros, jnp.int32(0)))
    if denoise_to_zero:
      x = _data_prediction(score_fn, x, ts[-1], alphas[-1], sigmas[-1])
      nfe = nfe + 1
    return x, nfe

  return _make_sampler(sde, shape, run, sharding)


def get_ddim_sampler(sde: sde_lib.SDE, shape, steps: int, schedule: str = 'uniform',
                     eps: float = 1e-3, denoise_to_zero: bool = False, sharding=None) -> Callable:
  """Deterministic DDIM = first-order exponential integrator (DPM-Solver++ 1).

  x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - e^{-h}) x0(x_i, t_i).
  Default schedule uniform in t, as DDIM. One NFE per step.
  """
  return get_dpm_solver_sampler(sde, shape, steps, order=1, schedule=schedule, eps=eps,
                                denoise_to_zero=denoise_to_zero, lower_order_final=False,
                                sharding=sharding)


def get_heun_sampler(sde: sde_lib.SDE, shape, steps: int, schedule: str = 'edm',
                     eps: float = 1e-3, churn: float = 0.0, s_min: float = 0.0,
                     s_max: float = float('inf'), s_noise: float = 1.0,
                     denoise_to_zero: bool = True, sharding=None) -> Callable:
  """EDM's second-order Heun sampler (Karras et al. 2022, Alg. 1 and 2) for any SDE.

  Works on x_hat = x / alpha(t) with noise level sigma_hat = sigma / alpha, in which every
  SDE is a VE process. Each step from sigma_hat_i to sigma_hat_{i+1} costs two NFE.
  With `churn > 0` each step first raises the noise level of the current state to
  sigma_hat_i (1 + gamma), gamma = min(churn / steps, sqrt(2) - 1) when
  s_min <= sigma_hat_i <= s_max (0 otherwise), by adding fresh noise of std
  s_noise sqrt(sigma'^2 - sigma_hat_i^2), then takes the Heun step from the raised level.
  The raised level is capped at sigma_hat(T) so that the score is never queried beyond T.

  `denoise_to_zero` (default, as EDM's final step to sigma = 0, which is exactly one
  Euler step to x0) returns x0(x(eps), eps) at the cost of one more NFE.
  Total NFE = 2 steps (+ 1).
  """
  if churn < 0 or s_noise < 0:
    raise ValueError(f'churn and s_noise must be >= 0, got {churn!r}, {s_noise!r}.')
  shape = _check_shape(shape)
  ns = NoiseSchedule(sde)
  ts_np = get_time_steps(sde, steps, schedule, eps)
  alphas_np, sigmas_np = ns.alpha_sigma(ts_np, np)
  ts, alphas, sigmas, shat = (jnp.asarray(v, jnp.float32) for v in
                              (ts_np, alphas_np, sigmas_np, sigmas_np / alphas_np))
  shat_max = shat[0]
  gamma_max = min(churn / steps, math.sqrt(2.0) - 1.0)

  def run(rng, score_fn, x, constrain):
    xh = x / alphas[0]

    def body(i, carry):
      xh, nfe = carry
      t_cur, a_cur, sig_cur, s_cur = ts[i], alphas[i], sigmas[i], shat[i]
      if gamma_max > 0:
        gamma = jnp.where((s_cur >= s_min) & (s_cur <= s_max), gamma_max, 0.0)
        s_new = jnp.minimum(s_cur * (1.0 + gamma), shat_max)
        noise = jax.random.normal(jax.random.fold_in(rng, i), xh.shape, xh.dtype)
        xh = xh + jnp.sqrt(jnp.maximum(s_new**2 - s_cur**2, 0.0)) * s_noise * noise
        # The raised level in the SDE's own time (identical to t_cur when gamma = 0).
        t_cur = jnp.where(s_new > s_cur, ns.t_of_sigma_hat(s_new), t_cur)
        a_new, sig_new = ns.alpha_sigma(t_cur)
        a_cur = jnp.where(s_new > s_cur, a_new, a_cur)
        sig_cur = jnp.where(s_new > s_cur, sig_new, sig_cur)
        s_cur = s_new
      # x0 predictions: the score is evaluated at x = alpha x_hat on the SDE's scale.
      d = (xh - _data_prediction(score_fn, a_cur * xh, t_cur, a_cur, sig_cur)) / s_cur
      s_next = shat[i + 1]
      x_euler = xh + (s_next - s_cur) * d
      x0_next = _data_prediction(score_fn, alphas[i + 1] * x_euler, ts[i + 1], alphas[i + 1],
                                 sigmas[i + 1])
      d_next = (x_euler - x0_next) / s_next
      xh = constrain(xh + (s_next - s_cur) * 0.5 * (d + d_next))
      return xh, nfe + 2

    xh, nfe = jax.lax.fori_loop(0, steps, body, (xh, jnp.int32(0)))
    if denoise_to_zero:
      return _data_prediction(score_fn, alphas[-1] * xh, ts[-1], alphas[-1], sigmas[-1]), nfe + 1
    return alphas[-1] * xh, nfe

  return _make_sampler(sde, shape, run, sharding)


_FAST_SAMPLERS = {
    'ddim': get_ddim_sampler,
    'dpm_solver_1': functools.partial(get_dpm_solver_sampler, order=1),
    'dpm_solver_2m': functools.partial(get_dpm_solver_sampler, order=2),
    'dpm_solver_3m': functools.partial(get_dpm_solver_sampler, order=3),
    'heun': get_heun_sampler,
}


def fast_sampler_names() -> list[str]:
  return sorted(_FAST_SAMPLERS)


def get_fast_sampler_builder(name: str) -> Callable:
  """The builder `builder(sde, shape, steps, ..., eps, sharding)` of a fast sampler by name."""
  if name not in _FAST_SAMPLERS:
    raise ValueError(f'Unknown fast sampler {name!r}; expected one of {fast_sampler_names()}.')
  return _FAST_SAMPLERS[name]


def get_fast_sampler(name: str, sde: sde_lib.SDE, shape, **kwargs) -> Callable:
  """A fast sampler by name ('ddim', 'dpm_solver_1', 'dpm_solver_2m', 'dpm_solver_3m',
  'heun'); `kwargs` go to its builder (`steps` is required)."""
  builder = get_fast_sampler_builder(name)
  if 'steps' not in kwargs:
    raise ValueError(f'Fast sampler {name!r} needs the number of steps (steps=...).')
  return builder(sde, shape, **kwargs)
