"""Controllable generation with exact Gaussian-mixture scores against closed forms.

Closed form used throughout: for a diagonal mixture sum_k w_k N(mu_k, diag(v_k)) and known
coordinates x_A, the conditional of the unknown coordinates x_B is the mixture
sum_k w'_k N(mu_kB, diag(v_kB)) with w'_k proportional to w_k N(x_A; mu_kA, diag(v_kA)).

The replacement method is exact when x_A and x_B are independent and approximate
otherwise (module docstring of controllable.py); tolerances below say which applies.
Samplers use sde.N = 500 steps to keep the tests fast.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde_jax import controllable as cg
from scoresde_jax import fast_solvers, gmm, sde_lib

N_STEPS = 500


def conditional_mixture(mix, known_idx, unknown_idx, x_known):
  """Closed-form conditional over the unknown coordinates given x_known (numpy float64)."""
  mk, vk = mix.means[:, known_idx], mix.variances[:, known_idx]
  log_w = np.log(mix.weights) - 0.5 * np.sum((x_known - mk) ** 2 / vk + np.log(2 * np.pi * vk), 1)
  w = np.exp(log_w - log_w.max())
  return gmm.GaussianMixture(w / w.sum(), mix.means[:, unknown_idx], mix.variances[:, unknown_idx])


def _labels_weights(mix, x):
  labels = np.asarray(mix.posterior(jnp.asarray(x, jnp.float32))).argmax(1)
  return labels, np.bincount(labels, minlength=mix.num_components) / len(x)


def test_independent_blocks_inpainting_is_exact():
  """x = (x_A, x_B) with independent 2-component mixtures per block (a 4-component
  diagonal mixture): the conditional of x_B is p_B, whatever x_A."""
  mA = np.array([[-2.0, 0.0], [2.0, 1.0]]); vA = np.array([[0.3, 0.5], [0.4, 0.2]]) ** 2
  mB = np.array([[-3.0, 1.0], [2.0, -2.0]]); vB = np.array([[0.5, 0.4], [0.3, 0.6]]) ** 2
  wA, wB = np.array([0.4, 0.6]), np.array([0.3, 0.7])
  pairs = [(a, b) for a in range(2) for b in range(2)]
  mix = gmm.GaussianMixture(np.array([wA[a] * wB[b] for a, b in pairs]),
                            np.array([np.r_[mA[a], mB[b]] for a, b in pairs]),
                            np.array([np.r_[vA[a], vB[b]] for a, b in pairs]))
  x_known = np.array([1.7, 0.8])
  cond = conditional_mixture(mix, [0, 1], [2, 3], x_known)
  # The closed form collapses to p_B's components (pairs (1, 0) and (1, 1) carry the mass).
  np.testing.assert_allclose(cond.weights[2:] / cond.weights[2:].sum(), wB, rtol=1e-10)

  sde = sde_lib.VPSDE(N=N_STEPS)
  n = 3000
  data = jnp.tile(jnp.asarray(np.r_[x_known, 0.0, 0.0], jnp.float32), (n, 1))
  mask = jnp.array([1.0, 1.0, 0.0, 0.0])
  inpainter = cg.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin', snr=0.16)
  x, nfe = inpainter(jax.random.PRNGKey(0), mix.score_fn(sde), data, mask)
  assert nfe == 2 * N_STEPS
  x = np.asarray(x, np.float64)
  np.testing.assert_array_equal(x[:, :2], np.asarray(data[:, :2]))  # known part returned exactly
  pB = gmm.GaussianMixture(wB, mB, vB)
  labels, w = _labels_weights(pB, x[:, 2:])
  # Binomial standard error, 4.5 SE; components are >= 5 std apart (labels exact).
  assert np.all(np.abs(w - wB) < 4.5 * np.sqrt(wB * (1 - wB) / n)), w
  for k in range(2):
    xk = x[labels == k, 2:]
    # Mean of the 2 relative variance errors: SE sqrt(2 / (2 n_k)); +0.05 for the 500-step
    # discretization (measured ~0.02).
    rel = np.mean(xk.var(0, ddof=1) / vB[k]) - 1
    assert abs(rel) < 4.5 * math.sqrt(1 / len(xk)) + 0.05, (k, rel)
    np.testing.assert_array_less(np.abs(xk.mean(0) - mB[k]), 4.5 * np.sqrt(vB[k] / len(xk)) + 0.03)


COUPLED = gmm.GaussianMixture(np.array([0.3, 0.3, 0.4]),
                              np.array([[-3.0, 0.0, -3.0, -3.0], [3.0, 0.0, 3.0, 3.0],
                                        [3.0, 0.0, -3.0, 3.0]]),
                              np.array([[0.25, 1.0, 0.25, 0.25]] * 3))


@pytest.mark.parametrize('sde', [sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=N_STEPS),
                                 sde_lib.subVPSDE(N=N_STEPS)], ids=['ve', 'subvp'])
def test_coupled_inpainting_follows_the_known_block(sde):
  """Known x_A = (2.5, 0.3) rules out component 0 (its x_A-likelihood is e^-60 of the others)
  and leaves components 1 and 2, which share their x_A distribution, at 3:4.

  The exact conditional has w' = (0, 3/7, 4/7). Replacement is approximate here: while the
  known part is noisy, trajectories drift towards component 0 and are redirected late;
  measured at n = 4000: w'_1 = 0.394 (VE), 0.414 (VP) against 0.429, no mass in
  component 0. Tolerances: 0.01 for component 0 (the marginal would give 0.3) and
  5 SE + 0.05 of method bias for w'_1 (the marginal would give 0.3 / 0.7 = 0.43 only by
  coincidence, so the within-block variances are asserted too).
  """
  x_known = np.array([2.5, 0.3])
  cond = conditional_mixture(COUPLED, [0, 1], [2, 3], x_known)
  np.testing.assert_allclose(cond.weights, [0.0, 3 / 7, 4 / 7], atol=1e-12)
  n = 2000
  data = jnp.tile(jnp.asarray(np.r_[x_known, 0.0, 0.0], jnp.float32), (n, 1))
  mask = jnp.array([1.0, 1.0, 0.0, 0.0])
  x, _ = cg.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin')(
      jax.random.PRNGKey(1), COUPLED.score_fn(sde), data, mask)
  x = np.asarray(x, np.float64)
  np.testing.assert_array_equal(x[:, :2], np.asarray(data[:, :2]))
  labels, w = _labels_weights(cond, x[:, 2:])
  assert w[0] < 0.01
  assert abs(w[1] - 3 / 7) < 5 * math.sqrt(3 / 7 * 4 / 7 / n) + 0.05, w
  for k in (1, 2):
    rel = np.mean(x[labels == k, 2:].var(0, ddof=1) / 0.25) - 1
    assert abs(rel) < 4.5 * math.sqrt(1 / np.sum(labels == k)) + 0.08, (k, rel)


def test_color_transform_round_trips():
  M = cg.COLOR_TRANSFORM
  np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-15)
  # The reference's (float32-rounded) matrix.
  ref = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                  [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                  [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]])
  np.testing.assert_allclose(M, ref, atol=2e-7)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
  np.testing.assert_allclose(cg.couple(cg.decouple(x)), x, atol=1e-6)
  np.testing.assert_allclose(cg.decouple(cg.couple(x)), x, atol=1e-6)
  gray = jnp.repeat(jnp.mean(x, -1, keepdims=True), 3, -1)
  latent = cg.decouple(gray)
  np.testing.assert_allclose(latent[..., 0], math.sqrt(3) * gray[..., 0], rtol=1e-5)
  np.testing.assert_allclose(latent[..., 1:], 0.0, atol=1e-6)
  with pytest.raises(ValueError, match='3 color channels'):
    cg.decouple(jnp.zeros((1, 2, 2, 4)))


def test_colorization_samples_the_conditional_chroma():
  """Mixture in the decoupled space (gray*sqrt(3), chroma1, chroma2), one pixel per image:
  latent gray levels -8, 0, 8 tell the components apart, so the latent gray 0.2 (pixel
  mean 0.2 / sqrt(3)) leaves component 1 alone (weights of the others < 1e-30): its
  chroma N((2, -1), diag(0.3^2, 0.5^2)) is the exact conditional. The gray levels are
  further apart than the chroma means so that the noisy known gray identifies the
  component before the chroma commits to one (with gray levels 3 apart, replacement sends
  part of the samples to other components' chroma, measured mean shifts 0.5-0.7: the
  method's known bias)."""
  lat = gmm.GaussianMixture(np.array([0.3, 0.4, 0.3]),
                            np.array([[-8.0, -2.0, 1.0], [0.0, 2.0, -1.0], [8.0, 0.0, 2.0]]),
                            np.array([[0.2, 0.4, 0.4], [0.2, 0.3, 0.5], [0.2, 0.5, 0.3]]) ** 2)
  sde = sde_lib.VPSDE(N=N_STEPS)
  latent_score = lat.score_fn(sde)

  def rgb_score(x, t):  # p_x(x) = p_y(decouple(x)), so grad_x = couple(grad_y)
    return cg.couple(latent_score(cg.decouple(x), t))

  n = 2000
  gray_level = 0.2 / math.sqrt(3)
  cond = conditional_mixture(lat, [0], [1, 2], np.array([0.2]))
  assert cond.weights[1] > 1 - 1e-12
  gray = jnp.full((n, 1, 1, 3), gray_level, jnp.float32)
  x, nfe = cg.get_pc_colorizer(sde, 'euler_maruyama', 'none')(jax.random.PRNGKey(2), rgb_score, gray)
  assert nfe == N_STEPS and x.shape == gray.shape
  np.testing.assert_allclose(jnp.mean(x, -1), gray_level, atol=1e-6)  # gray kept exactly
  chroma = np.asarray(cg.decouple(x)[:, 0, 0, 1:], np.float64)
  mu, v = lat.means[1, 1:], lat.variances[1, 1:]
  np.testing.assert_array_less(np.abs(chroma.mean(0) - mu), 4.5 * np.sqrt(v / n) + 0.02)
  rel = chroma.var(0, ddof=1) / v - 1
  # Relative SE of a sample variance sqrt(2 / n) = 0.032; +0.05 discretization allowance.
  np.testing.assert_array_less(np.abs(rel), 4.5 * math.sqrt(2 / n) + 0.05)


def _posterior_log_prob_fn(mix, sde):
  """Exact log p_t(k | x) of the diffused mixture: the ideal time-dependent classifier.

  Written out (log-softmax of log w_k + log N(x; a mu_k, a^2 v_k + s^2)) so that it stays
  finite where posteriors underflow."""
  w, mu, v = (jnp.asarray(a, jnp.float32) for a in (mix.weights, mix.means, mix.variances))

  def log_prob_fn(x, t):
    a, s = sde.marginal_prob(jnp.ones_like(t), t)
    var = a[:, None, None] ** 2 * v[None] + jnp.broadcast_to(s, t.shape)[:, None, None] ** 2
    log_like = -0.5 * jnp.sum((x[:, None] - a[:, None, None] * mu[None]) ** 2 / var
                              + jnp.log(var), axis=-1)
    return jax.nn.log_softmax(log_like + jnp.log(w), axis=-1)

  return log_prob_fn


def test_conditional_score_is_the_component_score():
  mix = gmm.random_mixture(0, 3, 3)
  sde = sde_lib.VPSDE()
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3)) * 3
  t = jnp.linspace(0.05, 0.9, 6)
  labels = jnp.array([0, 1, 2, 2, 1, 0])
  score = cg.conditional_score_fn(mix.score_fn(sde), _posterior_log_prob_fn(mix, sde), labels)(x, t)
  a = np.exp(-0.25 * np.asarray(t) ** 2 * 19.9 - 0.05 * np.asarray(t))
  s2 = 1 - a**2
  mu, v = mix.means[np.asarray(labels)], mix.variances[np.asarray(labels)]
  expected = -(np.asarray(x) - a[:, None] * mu) / (a[:, None] ** 2 * v + s2[:, None])
  np.testing.assert_allclose(score, expected, rtol=2e-4, atol=1e-4)
  with pytest.raises(ValueError, match='labels'):
    cg.conditional_score_fn(mix.score_fn(sde), _posterior_log_prob_fn(mix, sde), jnp.zeros((2, 1)))


@pytest.mark.parametrize('sampler_kind', ['dpm_solver_2m', 'pc'])
def test_class_conditional_sampling_returns_requested_component(sampler_kind):
  mix = gmm.random_mixture(0, 2, 3, spread=6.0)
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=N_STEPS)
  n = 1500
  labels = jnp.asarray(np.arange(n) % 3)
  cond = cg.conditional_score_fn(mix.score_fn(sde), _posterior_log_prob_fn(mix, sde), labels)
  if sampler_kind == 'pc':
    from scoresde_jax import sampling  # pylint: disable=import-outside-toplevel
    sampler = sampling.get_pc_sampler(sde, (n, 2), 'reverse_diffusion', 'none')
  else:
    sampler = fast_solvers.get_fast_sampler('dpm_solver_2m', sde, (n, 2), steps=40)
  x, _ = sampler(jax.random.PRNGKey(3), cond)
  x = np.asarray(x, np.float64)
  got, _ = _labels_weights(mix, x)
  np.testing.assert_array_equal(got, np.asarray(labels))  # every sample in its class
  for k in range(3):
    xk = x[got == k]
    rel = np.mean(xk.var(0, ddof=1) / mix.variances[k]) - 1
    # 500 samples per class: SE sqrt(2 / (2 * 500)) = 0.045; +0.06 discretization.
    assert abs(rel) < 4.5 * math.sqrt(1 / len(xk)) + 0.06, (k, rel)


def test_ode_interpolation_end_points_and_slerp():
  z0 = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  z1 = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
  z1 = z1 * (jnp.linalg.norm(z0, axis=1) / jnp.linalg.norm(z1, axis=1))[:, None]
  zs = cg.slerp(z0, z1, jnp.array([0.0, 0.3, 1.0]))
  np.testing.assert_allclose(zs[0], z0, atol=1e-5)
  np.testing.assert_allclose(zs[2], z1, atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(zs[1], axis=1), jnp.linalg.norm(z0, axis=1), rtol=1e-5)

  mix = gmm.random_mixture(0, 2, 3)
  sde = sde_lib.VPSDE()
  x0, _ = mix.sample(jax.random.PRNGKey(2), 2)
  x1, _ = mix.sample(jax.random.PRNGKey(3), 2)
  images, nfe = cg.get_ode_interpolator(sde)(mix.score_fn(sde), x0, x1, jnp.array([0.0, 0.5, 1.0]))
  assert images.shape == (3, 2, 2) and int(nfe) > 0
  # Encode-decode round trip at tolerances 1e-5.
  np.testing.assert_allclose(images[0], x0, atol=2e-2)
  np.testing.assert_allclose(images[2], x1, atol=2e-2)
  assert np.all(np.isfinite(images[1]))
