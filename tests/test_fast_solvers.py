"""Fast ODE solvers against closed forms: Gaussian flows, Gaussian-mixture statistics.

Exact answers used here:
  * For Gaussian data N(mu, v) (per coordinate) the probability-flow ODE is linear and
    maps x_T to x_t = alpha_t mu + sqrt((alpha_t^2 v + sigma_t^2) / (alpha_T^2 v + sigma_T^2))
    (x_T - alpha_T mu): the measured order of convergence of each solver comes from it.
  * For a Gaussian mixture the deterministic solvers are started from exact samples of
    p_T (the mixture pushed through the forward kernel), so what remains is their
    discretization error plus sampling noise; the mixture's components are well separated,
    so component labels are read off exactly from the posterior and the textbook standard
    errors of a proportion and of a sample variance apply.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde_jax import fast_solvers as fs
from scoresde_jax import gmm, sde_lib

SDES = {
    'vp': sde_lib.VPSDE(),
    'subvp': sde_lib.subVPSDE(),
    've': sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
}


def _alpha_sigma_np(sde, t):
  """Independent float64 closed forms of the perturbation kernel."""
  t = np.asarray(t, np.float64)
  if isinstance(sde, sde_lib.VESDE):
    return np.ones_like(t), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
  log_alpha = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
  alpha = np.exp(log_alpha)
  if isinstance(sde, sde_lib.VPSDE):
    return alpha, np.sqrt(1 - alpha**2)
  return alpha, 1 - alpha**2


@pytest.mark.parametrize('name', SDES)
def test_noise_schedule_matches_marginal_and_inverts(name):
  sde = SDES[name]
  ns = fs.NoiseSchedule(sde)
  t = np.linspace(1e-3, 1.0, 50)
  alpha_ref, sigma_ref = _alpha_sigma_np(sde, t)
  # Agrees with the SDE's own marginal_prob (what the score functions use).
  mean, std = sde.marginal_prob(jnp.ones(50), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(mean, alpha_ref, rtol=1e-5)
  np.testing.assert_allclose(std, sigma_ref, rtol=1e-4)
  # t(lambda(t)) = t, in float64 on the host and float32 in jnp.
  lam = np.log(alpha_ref / sigma_ref)
  np.testing.assert_allclose(ns.t_of_lambda(lam, np), t, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(ns.t_of_lambda(jnp.asarray(lam, jnp.float32)), t, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize('name', SDES)
def test_time_step_schedules(name):
  sde = SDES[name]
  steps, eps, rho = 12, 1e-3, 7.0
  for schedule in fs.SCHEDULES:
    t = fs.get_time_steps(sde, steps, schedule, eps)
    assert t.shape == (steps + 1,)
    assert t[0] == sde.T and t[-1] == eps
    assert np.all(np.diff(t) < 0)
  alpha, sigma = _alpha_sigma_np(sde, fs.get_time_steps(sde, steps, 'logsnr', eps))
  np.testing.assert_allclose(np.diff(np.log(alpha / sigma)),
                             np.diff(np.log(alpha / sigma))[0], rtol=1e-8)
  alpha, sigma = _alpha_sigma_np(sde, fs.get_time_steps(sde, steps, 'edm', eps))
  root = (sigma / alpha) ** (1 / rho)
  np.testing.assert_allclose(np.diff(root), np.diff(root)[0], rtol=1e-8)
  np.testing.assert_allclose(np.diff(fs.get_time_steps(sde, steps, 'uniform', eps)),
                             (eps - 1.0) / steps, rtol=1e-10)


def _gaussian_flow_error(sde, name, steps, batch=64, **kw):
  """RMS error of a solver against the exact PF-ODE map of N(mu, diag(v))."""
  mu, v = np.array([1.0, -2.0]), np.array([0.25, 0.5])
  data = gmm.GaussianMixture(np.array([1.0]), mu[None], v[None])
  x_T = sde.prior_sampling(jax.random.PRNGKey(0), (batch, 2))
  (a_T, a_0), (s_T, s_0) = _alpha_sigma_np(sde, [sde.T, 1e-3])
  exact = a_0 * mu + np.sqrt((a_0**2 * v + s_0**2) / (a_T**2 * v + s_T**2)) * (np.asarray(x_T) - a_T * mu)
  sampler = fs.get_fast_sampler(name, sde, (batch, 2), steps=steps, eps=1e-3, **kw)
  x, _ = sampler(jax.random.PRNGKey(1), data.score_fn(sde), x_T)
  return float(np.sqrt(np.mean((np.asarray(x, np.float64) - exact) ** 2)))


# Doubling the steps divides a global error O(h^p) by 2^p: log2 of the ratio estimates p.
# Ranges: the asymptotic order +- 0.3 (pre-asymptotic terms at 20-40 steps); the 3M solver
# must be clearly better than second order (on this Gaussian it measures ~4: the leading
# error term nearly vanishes for a linear data prediction).
@pytest.mark.parametrize('sde_name,name,kw,steps,lo,hi', [
    ('vp', 'ddim', dict(schedule='logsnr'), 20, 0.75, 1.25),
    ('vp', 'dpm_solver_2m', {}, 20, 1.7, 2.3),
    ('subvp', 'dpm_solver_2m', {}, 40, 1.7, 2.3),
    ('ve', 'dpm_solver_3m', {}, 20, 2.7, 5.0),
    ('vp', 'heun', dict(denoise_to_zero=False), 10, 1.7, 2.4),
    ('ve', 'heun', dict(denoise_to_zero=False), 10, 1.7, 2.4),
])
def test_measured_order_on_gaussian_flow(sde_name, name, kw, steps, lo, hi):
  sde = SDES[sde_name]
  coarse = _gaussian_flow_error(sde, name, steps, **kw)
  fine = _gaussian_flow_error(sde, name, 2 * steps, **kw)
  order = math.log2(coarse / fine)
  assert lo < order < hi, (coarse, fine, order)
  assert fine < 0.05  # and accurate in absolute terms (coordinates are O(1))


def _exact_prior_sample(mix, sde, n, rng):
  """x_T = alpha_T x_0 + sigma_T z with x_0 from the mixture: an exact sample of p_T."""
  data_rng, noise_rng = jax.random.split(rng)
  x0, _ = mix.sample(data_rng, n)
  mean, std = sde.marginal_prob(x0, jnp.full((n,), sde.T))
  return mean + sde_lib.batch_mul(std, jax.random.normal(noise_rng, x0.shape))


# Mixtures: 2-D with K=3 and 16-D with K=4, components ~6 and ~5 std apart at least, so the
# posterior assigns every sample with certainty (asserted below).
# Tolerances, n samples, n_k = w_k n in component k:
#   weights:    |w_hat - w| < 4.5 sqrt(w (1 - w) / n)                 (binomial standard error)
#   variances:  mean over the D coordinates of v_hat / v - 1, per component, within
#               4.5 sqrt(2 / (D n_k)) + bias, the standard error of a sample variance
#               (relative 2 / n_k for Gaussian data) averaged over D independent coordinates;
#               bias = 0.06 for the solver's discretization error at these step counts
#               (measured at n = 20000: 0.02-0.05; a sign or coefficient error gives >> 0.2).
#   means:      |m_hat - mu| < 4.5 sqrt(v / n_k) + 0.05 per coordinate.
MIX_CASES = [
    ('vp', 2, 'dpm_solver_2m', dict(steps=40)),
    ('subvp', 2, 'dpm_solver_3m', dict(steps=40)),
    ('ve', 2, 'heun', dict(steps=25)),
    ('vp', 16, 'heun', dict(steps=25)),
    ('ve', 16, 'dpm_solver_2m', dict(steps=40)),
    ('subvp', 16, 'dpm_solver_3m', dict(steps=40)),
]


def _mixture(dim):
  return gmm.random_mixture(0, 2, 3, spread=6.0) if dim == 2 else gmm.random_mixture(0, 16, 4)


@pytest.mark.parametrize('sde_name,dim,name,kw', MIX_CASES)
def test_mixture_statistics(sde_name, dim, name, kw):
  sde = SDES[sde_name]
  mix = _mixture(dim)
  n = 4000 if dim == 2 else 2000
  x_T = _exact_prior_sample(mix, sde, n, jax.random.PRNGKey(1))
  sampler = fs.get_fast_sampler(name, sde, (n, dim), **kw)
  x, nfe = sampler(jax.random.PRNGKey(2), mix.score_fn(sde), x_T)
  expected_nfe = 2 * kw['steps'] + 1 if name == 'heun' else kw['steps']
  assert int(nfe) == expected_nfe
  x = np.asarray(x, np.float64)
  post = np.asarray(mix.posterior(jnp.asarray(x, jnp.float32)))
  assert np.mean(post.max(1) > 0.999) > 0.995  # labels are unambiguous
  labels = post.argmax(1)
  w = np.bincount(labels, minlength=mix.num_components) / n
  np.testing.assert_array_less(np.abs(w - mix.weights), 4.5 * np.sqrt(mix.weights * (1 - mix.weights) / n))
  for k in range(mix.num_components):
    xk = x[labels == k]
    nk = len(xk)
    rel = np.mean(xk.var(0, ddof=1) / mix.variances[k]) - 1
    assert abs(rel) < 4.5 * math.sqrt(2 / (dim * nk)) + 0.06, (k, rel)
    np.testing.assert_array_less(np.abs(xk.mean(0) - mix.means[k]),
                                 4.5 * np.sqrt(mix.variances[k] / nk) + 0.05)


def test_heun_with_churn_samples_the_mixture():
  """Stochastic churn (EDM Alg. 2) keeps the target distribution; more steps for the SDE part."""
  sde = SDES['vp']
  mix = _mixture(2)
  n = 4000
  sampler = fs.get_heun_sampler(sde, (n, 2), steps=40, churn=20.0, s_min=0.05, s_max=50.0)
  x, nfe = sampler(jax.random.PRNGKey(3), mix.score_fn(sde),
                   _exact_prior_sample(mix, sde, n, jax.random.PRNGKey(4)))
  assert int(nfe) == 81
  x = np.asarray(x, np.float64)
  labels = np.asarray(mix.posterior(jnp.asarray(x, jnp.float32))).argmax(1)
  w = np.bincount(labels, minlength=3) / n
  np.testing.assert_array_less(np.abs(w - mix.weights), 4.5 * np.sqrt(mix.weights * (1 - mix.weights) / n))
  for k in range(3):
    nk = np.sum(labels == k)
    rel = np.mean(x[labels == k].var(0, ddof=1) / mix.variances[k]) - 1
    assert abs(rel) < 4.5 * math.sqrt(2 / (2 * nk)) + 0.08, (k, rel)


def test_determinism_and_nfe_counts():
  sde = SDES['vp']
  mix = _mixture(2)
  score = mix.score_fn(sde)
  shape = (16, 2)
  key, other = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  x_T = sde.prior_sampling(jax.random.PRNGKey(5), shape)

  dpm = fs.get_fast_sampler('dpm_solver_3m', sde, shape, steps=7)
  a, nfe = dpm(key, score)
  b, _ = dpm(key, score)
  c, _ = dpm(other, score)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)  # a different key draws a different prior sample
  assert int(nfe) == 7
  assert int(fs.get_dpm_solver_sampler(sde, shape, 7, denoise_to_zero=True)(key, score)[1]) == 8
  assert int(fs.get_ddim_sampler(sde, shape, 9)(key, score)[1]) == 9

  heun = fs.get_heun_sampler(sde, shape, steps=5)  # churn = 0: deterministic given x_T
  h1, nfe = heun(key, score, x_T)
  h2, _ = heun(other, score, x_T)
  np.testing.assert_array_equal(h1, h2)
  assert int(nfe) == 11
  assert int(fs.get_heun_sampler(sde, shape, 5, denoise_to_zero=False)(key, score, x_T)[1]) == 10

  churned = fs.get_heun_sampler(sde, shape, steps=5, churn=5.0)
  s1, _ = churned(key, score, x_T)
  s2, _ = churned(key, score, x_T)
  s3, _ = churned(other, score, x_T)
  np.testing.assert_array_equal(s1, s2)
  assert not np.allclose(s1, s3)


def test_solvers_agree_with_each_other_at_many_steps():
  """All solvers converge to the same ODE solution (same x_T) on a mixture, on images."""
  sde = SDES['ve']
  mix = gmm.random_mixture(3, 12, 3)
  shape = (8, 2, 2, 3)  # image-shaped batch: the score function reshapes
  x_T = sde.prior_sampling(jax.random.PRNGKey(0), shape)
  score = mix.score_fn(sde)
  ref, _ = fs.get_fast_sampler('dpm_solver_3m', sde, shape, steps=400)(None, score, x_T)
  heun, _ = fs.get_fast_sampler('heun', sde, shape, steps=200, denoise_to_zero=False)(None, score, x_T)
  dpm2, _ = fs.get_fast_sampler('dpm_solver_2m', sde, shape, steps=400)(None, score, x_T)
  assert ref.shape == shape
  # Second-order errors at these step counts: ~2e-3 (Heun) and ~1e-3 (2M), measured against
  # 3M at 1000 steps; coordinates are O(3).
  np.testing.assert_allclose(heun, ref, atol=4e-3)
  np.testing.assert_allclose(dpm2, ref, atol=4e-3)


def test_bad_arguments():
  sde = SDES['vp']
  with pytest.raises(ValueError, match='Unknown fast sampler'):
    fs.get_fast_sampler('dpm_solver_9', sde, (4, 2), steps=10)
  with pytest.raises(ValueError, match='steps'):
    fs.get_fast_sampler('heun', sde, (4, 2))
  with pytest.raises(ValueError, match='order'):
    fs.get_dpm_solver_sampler(sde, (4, 2), 10, order=4)
  with pytest.raises(ValueError, match='schedule'):
    fs.get_dpm_solver_sampler(sde, (4, 2), 10, schedule='cosine')
  with pytest.raises(ValueError, match='eps'):
    fs.get_heun_sampler(sde, (4, 2), 10, eps=0.0)
  with pytest.raises(ValueError, match='steps must be a positive integer'):
    fs.get_ddim_sampler(sde, (4, 2), 0)
  with pytest.raises(ValueError, match='VPSDE, subVPSDE or VESDE'):
    fs.NoiseSchedule(object())
  sampler = fs.get_ddim_sampler(sde, (4, 2), 5)
  with pytest.raises(ValueError, match='x_init has shape'):
    sampler(jax.random.PRNGKey(0), lambda x, t: -x, jnp.zeros((3, 2)))


@pytest.mark.parametrize('sde_name,eps', [('ve_digits', 1e-5), ('vp', 1e-3)])
def test_exact_empirical_score_lands_on_training_digits(sde_name, eps):
  """Image-shaped end to end: with the exact score of the empirical distribution of 200
  scikit-learn digits (a mixture of narrow Gaussians, std 0.01, at the digits), each solver
  started from the SDE's prior, on [B, 8, 8, 1] images, ends next to a training digit: at the
  distance that the remaining noise explains (sigma(eps) ~ 0.01 and the std 0.01 per pixel:
  ~0.11 over 64 pixels, ~0.08 after the final denoising), while distinct digits lie > 0.6 apart."""
  from sklearn.datasets import load_digits
  digits = load_digits().images[:200].reshape(200, 64) / 16.0
  mix = gmm.GaussianMixture(np.full(200, 1 / 200), digits, np.full(digits.shape, 1e-4))
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0) if sde_name == 've_digits' else SDES[sde_name]
  score = mix.score_fn(sde)
  gaps = np.sqrt(((digits[:, None] - digits[None]) ** 2).sum(-1))
  assert gaps[~np.eye(200, dtype=bool)].min() > 0.6
  shape = (48, 8, 8, 1)
  for name, kw in [('dpm_solver_2m', dict(steps=20)), ('dpm_solver_3m', dict(steps=20)),
                   ('ddim', dict(steps=50)), ('heun', dict(steps=10))]:
    x, _ = fs.get_fast_sampler(name, sde, shape, eps=eps, **kw)(jax.random.PRNGKey(0), score)
    x = np.asarray(x).reshape(48, 64)
    dist = np.sqrt(((x[:, None] - digits[None]) ** 2).sum(-1))
    assert dist.min(1).max() < 0.2, (name, dist.min(1).max())
    assert len(set(dist.argmin(1))) > 30, name  # many different digits, not one attractor
