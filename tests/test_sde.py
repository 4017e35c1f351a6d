"""SDEs against the paper's closed forms and against simulation of the SDE itself."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from scoresde_jax import sde_lib

SDES = [sde_lib.VESDE(0.01, 50.0, 1000), sde_lib.VPSDE(0.1, 20.0, 1000),
        sde_lib.subVPSDE(0.1, 20.0, 1000)]
TIMES = np.array([1e-3, 0.1, 0.37, 0.7, 1.0], np.float32)


def _int_beta(t, b0=0.1, b1=20.0):
  return integrate.quad(lambda s: b0 + s * (b1 - b0), 0.0, t)[0]


def _paper_marginal(sde, t):
  """Mean coefficient and std from the paper's definitions (integrals done numerically)."""
  if isinstance(sde, sde_lib.VESDE):
    return 1.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
  B = _int_beta(t, sde.beta_min, sde.beta_max)
  if isinstance(sde, sde_lib.VPSDE):
    return math.exp(-B / 2), math.sqrt(1 - math.exp(-B))
  return math.exp(-B / 2), 1 - math.exp(-B)


@pytest.mark.parametrize('sde', SDES, ids=lambda s: type(s).__name__)
def test_marginal_prob_matches_closed_form(sde):
  x = jnp.full((len(TIMES), 3), 2.0)
  mean, std = sde.marginal_prob(x, jnp.asarray(TIMES))
  for i, t in enumerate(TIMES):
    a, s = _paper_marginal(sde, float(t))
    np.testing.assert_allclose(mean[i], 2.0 * a, rtol=2e-6)
    np.testing.assert_allclose(std[i], s, rtol=2e-5)


@pytest.mark.parametrize('sde', SDES, ids=lambda s: type(s).__name__)
def test_marginals_solve_the_moment_equations(sde):
  """For dx = f(t) x dt + g(t) dw: d mean/dt = f mean and d var/dt = 2 f var + g^2."""
  t = jnp.asarray(TIMES[1:-1])
  h = 1e-3
  ones = jnp.ones((len(t), 1))

  def moments(t):
    mean, std = sde.marginal_prob(ones, t)
    return mean[:, 0], std**2

  (m_hi, v_hi), (m_lo, v_lo), (m, v) = moments(t + h), moments(t - h), moments(t)
  drift, diffusion = sde.sde(ones, t)
  f = drift[:, 0]  # linear drift coefficient (x = 1)
  np.testing.assert_allclose((m_hi - m_lo) / (2 * h), f * m, rtol=2e-3, atol=1e-5)
  np.testing.assert_allclose((v_hi - v_lo) / (2 * h), 2 * f * v + diffusion**2, rtol=3e-3)


@pytest.mark.parametrize('sde', SDES, ids=lambda s: type(s).__name__)
def test_euler_maruyama_simulation_matches_marginals(sde):
  """20,000 paths of the forward SDE from x0 = 1.5: sample mean/std vs marginal_prob.

  The std of a sample mean is std / sqrt(n) < 0.01 std, of a sample std about 0.5%; with
  2,000 Euler steps the discretization bias is below 1%. Tolerance: 3% of the std.
  VE's marginal_prob (like the paper's) has std sigma(t), which includes sigma_min at t = 0,
  so its paths start from N(x0, sigma_min^2).
  """
  n, steps = 20000, 2000
  dt = sde.T / steps
  x0 = 1.5
  init = jnp.full((n, 1), x0)
  if isinstance(sde, sde_lib.VESDE):
    init = init + sde.sigma_min * jax.random.normal(jax.random.PRNGKey(1), init.shape)

  def step(x, inp):
    i, key = inp
    t = jnp.full((n,), i * dt)
    drift, g = sde.sde(x, t)
    x = x + drift * dt + sde_lib.batch_mul(g * math.sqrt(dt), jax.random.normal(key, x.shape))
    return x, x

  keys = jax.random.split(jax.random.PRNGKey(0), steps)
  _, path = jax.jit(lambda: jax.lax.scan(step, init, (jnp.arange(steps), keys)))()
  for t in (0.1, 0.5, 1.0):
    k = int(round(t / dt)) - 1
    xs = np.asarray(path[k, :, 0])
    mean, std = sde.marginal_prob(jnp.full((1, 1), x0), jnp.full((1,), t))
    mean, std = float(mean[0, 0]), float(std[0])
    assert abs(xs.mean() - mean) < 0.03 * std, (t, xs.mean(), mean)
    assert abs(xs.std() - std) < 0.03 * std, (t, xs.std(), std)


def test_prior_logp_is_the_prior_density():
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 2)) * 7
  for sde, scale in [(SDES[0], 50.0), (SDES[1], 1.0), (SDES[2], 1.0)]:
    expected = np.sum(-0.5 * (np.asarray(z).reshape(4, -1) / scale) ** 2
                      - np.log(scale * np.sqrt(2 * np.pi)), axis=-1)
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)
    sample = sde.prior_sampling(jax.random.PRNGKey(1), (20000, 2))
    assert abs(float(sample.std()) / scale - 1) < 0.02


def test_ve_discretization_is_smld():
  """x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z on the geometric noise levels."""
  sde = sde_lib.VESDE(0.01, 50.0, 10)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))
  t = (jnp.arange(10) + 0.25) / 9.0
  f, G = sde.discretize(jnp.ones((10, 2)), t)
  prev = np.concatenate([[0.0], sigmas[:-1]])
  np.testing.assert_allclose(G, np.sqrt(sigmas**2 - prev**2), rtol=1e-5)
  np.testing.assert_array_equal(f, 0.0)


def test_vp_discretization_is_ddpm():
  sde = sde_lib.VPSDE(0.1, 20.0, 50)
  betas = np.linspace(0.1 / 50, 20.0 / 50, 50)
  t = (jnp.arange(50) + 0.25) / 49.0  # step index = floor(t (N - 1)), as the reference
  x = jnp.full((50, 2), 3.0)
  f, G = sde.discretize(x, t)
  np.testing.assert_allclose(f[:, 0], 3.0 * (np.sqrt(1 - betas) - 1), rtol=1e-4)  # float32 x - x cancels
  np.testing.assert_allclose(G, np.sqrt(betas), rtol=1e-6)
  np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)


def test_subvp_discretization_is_euler_maruyama():
  sde = sde_lib.subVPSDE(0.1, 20.0, 100)
  x, t = jnp.full((2, 3), 0.5), jnp.asarray([0.2, 0.8])
  f, G = sde.discretize(x, t)
  drift, g = sde.sde(x, t)
  np.testing.assert_allclose(f, drift / 100, rtol=1e-6)
  np.testing.assert_allclose(G, g / 10, rtol=1e-6)


@pytest.mark.parametrize('sde', SDES, ids=lambda s: type(s).__name__)
def test_reverse_sde_and_probability_flow(sde):
  score_fn = lambda x, t: -x * (1 + t[:, None])
  x, t = jnp.asarray([[0.3, -1.0], [2.0, 0.5]]), jnp.asarray([0.25, 0.75])
  drift, g = sde.sde(x, t)
  score = score_fn(x, t)
  r_drift, r_g = sde.reverse(score_fn).sde(x, t)
  np.testing.assert_allclose(r_drift, drift - g[:, None] ** 2 * score, rtol=1e-6)
  np.testing.assert_allclose(r_g, g)
  o_drift, o_g = sde.reverse(score_fn, probability_flow=True).sde(x, t)
  np.testing.assert_allclose(o_drift, drift - 0.5 * g[:, None] ** 2 * score, rtol=1e-6)
  np.testing.assert_array_equal(o_g, 0.0)
  f, G = sde.discretize(x, t)
  rf, rG = sde.reverse(score_fn).discretize(x, t)
  np.testing.assert_allclose(rf, f - G[:, None] ** 2 * score, rtol=1e-6)
  np.testing.assert_allclose(rG, G)


def test_sdes_are_immutable_and_jit_static():
  sde = sde_lib.VPSDE(0.1, 20.0, 1000)
  with pytest.raises(Exception):
    sde.N = 3
  f = jax.jit(lambda s, x: s.marginal_prob(x, jnp.ones((1,)) * 0.5)[1], static_argnums=0)
  np.testing.assert_allclose(f(sde, jnp.ones((1, 1))), sde.marginal_prob(jnp.ones((1, 1)), jnp.full((1,), 0.5))[1])
  assert sde_lib.get_sde('VESDE', sigma_min=0.01, sigma_max=50.0, N=10) == sde_lib.VESDE(0.01, 50.0, 10)
  with pytest.raises(ValueError, match='Unknown SDE'):
    sde_lib.get_sde('vpsd')
