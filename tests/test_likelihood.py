"""Likelihoods through the probability-flow ODE against Gaussian-mixture densities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde_jax import gmm, likelihood, sde_lib

MIX = gmm.random_mixture(1, 2, 3)
X = MIX.sample(jax.random.PRNGKey(0), 400)[0]
LN2 = math.log(2.0)


@pytest.mark.parametrize('sde', [sde_lib.VESDE(0.01, 50.0), sde_lib.VPSDE(), sde_lib.subVPSDE()],
                         ids=lambda s: type(s).__name__)
def test_exact_trace_flow_is_the_change_of_variables(sde):
  """log p_eps(x) = log p_T(z) + int div: checked per point, with the true p_T at z.

  This holds for the flow of the exact score whatever the prior; the model's bpd uses the
  SDE's prior instead of the true p_T, and only that term differs (checked for VP below).
  """
  eps = 1e-5
  fn = likelihood.get_likelihood_fn(sde, rtol=1e-6, atol=1e-6, eps=eps, hutchinson_type='exact')
  bpd, z, nfe = fn(jax.random.PRNGKey(1), MIX.score_fn(sde), X)
  delta = -bpd * 2 * LN2 - sde.prior_logp(z)
  true_eps = MIX.marginal_logpdf(sde, X, jnp.full((len(X),), eps))
  via_flow = MIX.marginal_logpdf(sde, z, jnp.ones((len(X),))) + delta
  np.testing.assert_allclose(via_flow, true_eps, atol=2e-3)
  assert int(nfe) > 10


def test_vp_bits_per_dim_equals_the_data_density():
  """bpd = -log2 p(x) / D up to the prior's mismatch: N(0, I) is not exactly p_T, and the
  difference log N(z) - log p_T(z), computed here exactly, bounds the error per point."""
  sde = sde_lib.VPSDE()
  fn = likelihood.get_likelihood_fn(sde, rtol=1e-6, atol=1e-6, eps=1e-5,
                                    hutchinson_type='exact', bits_offset=0.0)
  bpd, z, _ = fn(jax.random.PRNGKey(1), MIX.score_fn(sde), X)
  expected = -MIX.logpdf(X) / (2 * LN2)
  mismatch = np.asarray(sde.prior_logp(z) - MIX.marginal_logpdf(sde, z, jnp.ones((len(X),))))
  assert np.abs(mismatch).mean() < 0.2  # the prior is close to p_T ...
  err = np.asarray(bpd - expected)
  np.testing.assert_allclose(err, -mismatch / (2 * LN2), atol=3e-3)  # ... and is all the error
  offset = likelihood.get_likelihood_fn(sde, rtol=1e-6, atol=1e-6, eps=1e-5,
                                        hutchinson_type='exact',
                                        bits_offset=likelihood.bits_offset(centered=True))
  np.testing.assert_allclose(offset(jax.random.PRNGKey(1), MIX.score_fn(sde), X)[0], bpd + 7.0,
                             atol=1e-5)


@pytest.mark.parametrize('kind', ['rademacher', 'gaussian'])
def test_hutchinson_estimate_is_unbiased(kind):
  """The stochastic trace gives per-point estimates whose average matches the exact one
  within 4 standard errors (the spread of the per-point estimates over sqrt(n))."""
  sde = sde_lib.VPSDE()
  mix16 = gmm.random_mixture(2, 16, 3)
  x = mix16.sample(jax.random.PRNGKey(3), 1000)[0]
  exact = -mix16.logpdf(x) / (16 * LN2)
  fn = likelihood.get_likelihood_fn(sde, eps=1e-5, hutchinson_type=kind)
  bpd, _, _ = fn(jax.random.PRNGKey(4), mix16.score_fn(sde), x)
  err = np.asarray(bpd - exact)
  stderr = err.std() / np.sqrt(len(err))
  assert err.std() > 0  # the estimate is stochastic ...
  assert abs(err.mean()) < 4 * stderr + 1e-3, (err.mean(), stderr)  # ... and unbiased


def test_unknown_hutchinson_type():
  with pytest.raises(ValueError, match="Unknown hutchinson_type 'rademacer'"):
    likelihood.get_likelihood_fn(sde_lib.VPSDE(), hutchinson_type='rademacer')
