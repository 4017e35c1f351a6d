"""Likelihood-weighted training with importance-sampled times (Song et al. 2021).

q(t) is proportional to g(t)^2 / std(t)^2, whose integral is log(std^2 / mean^2), the SDE's
`log_noise_to_signal`. The checks are against exact answers: the derivative identity, the
closed-form CDF (a KS test), and the loss's expectation for Gaussian data and an affine
score model, which has a closed form at every t (so the expectation over t is a quadrature).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scoresde_jax import losses, sde_lib

SDES = {'ve': sde_lib.VESDE(), 'vp': sde_lib.VPSDE(), 'subvp': sde_lib.subVPSDE()}
EPS = 1e-5


def g2_over_var(sde, t):
  t = jnp.asarray(t, jnp.float64)
  return sde.sde(jnp.zeros_like(t), t)[1] ** 2 / sde.marginal_prob(jnp.zeros_like(t), t)[1] ** 2


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize('name', sorted(SDES))
def test_log_noise_to_signal_integrates_the_weight_and_inverts(name):
  sde = SDES[name]
  t = jnp.linspace(EPS, 1.0, 101, dtype=jnp.float64)
  derivative = jax.vmap(jax.grad(sde.log_noise_to_signal))(t)
  np.testing.assert_allclose(derivative, g2_over_var(sde, t), rtol=1e-12)
  np.testing.assert_allclose(sde.time_at_log_noise_to_signal(sde.log_noise_to_signal(t)), t,
                             rtol=1e-12, atol=1e-15)
  _, std = sde.marginal_prob(jnp.ones_like(t), t)
  mean = sde.marginal_prob(jnp.ones_like(t), t)[0]
  np.testing.assert_allclose(sde.log_noise_to_signal(t), jnp.log(std**2 / mean**2), rtol=1e-10)


@pytest.mark.parametrize('name', ['vp', 'subvp'])
def test_sampled_times_follow_q(name):
  sde = SDES[name]
  t, _ = sde_lib.importance_sampled_times(sde, jax.random.PRNGKey(0), (20000,), EPS)
  lo, hi = (float(sde.log_noise_to_signal(jnp.float64(x))) for x in (EPS, 1.0))
  cdf = lambda x: (np.asarray(sde.log_noise_to_signal(jnp.asarray(x))) - lo) / (hi - lo)
  assert scipy.stats.kstest(np.asarray(t), cdf).pvalue > 1e-3
  # The test has power: the same times are far from uniform ones.
  assert scipy.stats.kstest(np.asarray(t), 'uniform', args=(EPS, 1.0 - EPS)).pvalue < 1e-12


def test_ve_times_are_uniform_with_unit_weights():
  t, w = sde_lib.importance_sampled_times(SDES['ve'], jax.random.PRNGKey(1), (5000,), EPS)
  np.testing.assert_allclose(w, 1.0, rtol=1e-12)
  assert scipy.stats.kstest(np.asarray(t), 'uniform', args=(EPS, 1.0 - EPS)).pvalue > 1e-3


# Gaussian data N(MU, S^2 I) in D dimensions; score model -A(t) (x - B(t)), exact for
# A = 1 / (alpha^2 S^2 + std^2), B = alpha MU; perturbed by a factor and a shift.
MU, S, D = 0.3, 0.5, 4


def affine_score(sde, t, perturbed):
  alpha = sde.marginal_prob(jnp.ones_like(t), t)[0]
  std = sde.marginal_prob(jnp.zeros_like(t), t)[1]
  a = 1.0 / (alpha**2 * S**2 + std**2)
  b = alpha * MU
  return (1.1 * a, b + 0.1) if perturbed else (a, b)


def expected_loss_at(sde, t, perturbed):
  """E over x0 and z of g^2 |s(x_t) + z / std|^2 / 2 summed over dimensions (reduce_mean=False)."""
  t = jnp.asarray(t, jnp.float64)
  alpha = sde.marginal_prob(jnp.ones_like(t), t)[0]
  std = sde.marginal_prob(jnp.zeros_like(t), t)[1]
  a, b = affine_score(sde, t, perturbed)
  # s + z/std = -a alpha (x0 - MU) - a (alpha MU - b) + z (1/std - a std), per dimension.
  per_dim = (a * (alpha * MU - b)) ** 2 + (a * alpha * S) ** 2 + (1 / std - a * std) ** 2
  g2 = sde.sde(jnp.zeros_like(t), t)[1] ** 2
  return 0.5 * D * g2 * per_dim


@functools.lru_cache
def gauss_legendre(n):
  return np.polynomial.legendre.leggauss(n)


def quadrature(f, a, b, n=400):
  """Gauss-Legendre quadrature of a vectorized f on [a, b] (smooth integrands: exact to
  rounding at this order)."""
  x, w = gauss_legendre(n)
  return float(np.sum(w * f(0.5 * (b - a) * x + 0.5 * (b + a))) * 0.5 * (b - a))


def uniform_time_objective(sde, perturbed):
  """E_{t ~ U(eps, 1)} of the expected loss; the integrand varies like 1/t near 0, so the
  quadrature runs over log t."""
  f = lambda s: np.asarray(expected_loss_at(sde, np.exp(s), perturbed)) * np.exp(s)
  return quadrature(f, np.log(EPS), 0.0) / (1.0 - EPS)


@pytest.mark.parametrize('perturbed', [False, True])
@pytest.mark.parametrize('name', ['vp', 'subvp', 've'])
def test_importance_weights_keep_the_expectation(name, perturbed):
  """Quadrature in t of the uniform-t objective equals quadrature in the CDF value u of the
  weighted objective at the implementation's t(u), w(t(u))."""
  sde = SDES[name]

  def weighted(u):
    t, w = sde_lib.importance_times(sde, jnp.asarray(u, jnp.float64), EPS)
    return np.asarray(w * expected_loss_at(sde, t, perturbed))

  assert quadrature(weighted, 0.0, 1.0) == pytest.approx(uniform_time_objective(sde, perturbed),
                                                         rel=1e-8)


def affine_apply_fn(sde, perturbed):
  """A continuous VP-style network (predicts -std * score from labels t * 999)."""

  def apply_fn(params, x, labels, rng):
    del params, rng
    t = labels / 999
    a, b = affine_score(sde, t, perturbed)
    std = sde.marginal_prob(jnp.zeros_like(t), t)[1]
    return sde_lib.batch_mul(std * a, x - sde_lib.batch_mul(b, jnp.ones_like(x)))

  return apply_fn


@pytest.mark.parametrize('name', ['vp', 'subvp'])
def test_training_loss_is_unbiased_with_much_lower_variance(name):
  sde = SDES[name]
  apply_fn = affine_apply_fn(sde, perturbed=True)
  want = uniform_time_objective(sde, True)
  data = MU + S * jax.random.normal(jax.random.PRNGKey(2), (32, 256, D), jnp.float64)
  keys = jax.random.split(jax.random.PRNGKey(3), 32)
  estimates = {}
  for importance in (False, True):
    loss_fn = losses.get_sde_loss_fn(sde, apply_fn, continuous=True, reduce_mean=False,
                                     likelihood_weighting=True, eps=EPS,
                                     importance_weighting=importance)
    estimates[importance] = np.asarray(jax.jit(jax.vmap(lambda b, k: loss_fn(None, b, k)))(
        data, keys))
  mean, stderr = estimates[True].mean(), estimates[True].std(ddof=1) / np.sqrt(32)
  assert abs(mean - want) < 5 * stderr, (mean, want, stderr)
  assert stderr < 0.02 * want  # a tight estimate, so the check above is sharp
  # The uniform-t estimator has the same mean but a far larger spread (1/t near t = 0).
  assert estimates[False].std() > 10 * estimates[True].std()


def test_importance_weighting_needs_the_likelihood_weighting():
  with pytest.raises(ValueError, match='likelihood_weighting'):
    losses.get_sde_loss_fn(SDES['vp'], affine_apply_fn(SDES['vp'], False),
                           likelihood_weighting=False, importance_weighting=True)
