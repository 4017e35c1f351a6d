"""Unadjusted Langevin MCMC (scoresde_jax.mcmc) against exact answers: a Gaussian target, the
discretization's exact stationary variance, DDLS with an exact discriminator, the schedule and
the recorded chain, and a batch sharded over 8 devices."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from scoresde_jax import errors, mcmc
from xla_test_flags import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tolerances are this many standard errors of the estimate (from the sample size).
Z = 5.0


def gaussian_energy(mean, std):
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  return lambda z: 0.5 * jnp.sum(((z - mean) / std) ** 2, axis=-1)


def test_gaussian_target_mean_and_variance():
  """N(m, diag(s^2)) from 0: the step size decays from 0.04 (fast burn-in) to 0.0025, where the
  discretization's variance excess eps / (4 s^2) is at most 0.25% (s = 0.5), a sixth of the
  variance's standard error."""
  mean, std, n = np.array([1.0, -2.0, 3.0]), np.array([0.5, 1.0, 1.5]), 8000
  sampler = mcmc.get_langevin_sampler(2000, mcmc.decay(0.04, 0.5, 400))
  z = np.asarray(sampler(jax.random.PRNGKey(0), jnp.zeros((n, 3)), gaussian_energy(mean, std)),
                 np.float64)
  assert np.all(np.abs(z.mean(0) - mean) < Z * std / np.sqrt(n)), z.mean(0)
  # Var(sample variance) = 2 s^4 / (n - 1) for Gaussian samples.
  assert np.all(np.abs(z.var(0, ddof=1) - std**2) < Z * std**2 * np.sqrt(2 / (n - 1))), z.var(0)


def test_stationary_variance_of_the_discretization():
  """On N(0, s^2) one move is z' = (1 - eps / (2 s^2)) z + sqrt(eps) n, whose fixed point
  v = a^2 v + eps is v = s^2 / (1 - eps / (4 s^2)). With s = 1, eps = 1: 4/3, 25 standard
  errors from s^2 = 1; the contraction a = 1/2 forgets the start in 60 moves."""
  s, eps, n, dim = 1.0, 1.0, 20000, 4
  sampler = mcmc.get_langevin_sampler(60, mcmc.constant(eps))
  z = np.asarray(sampler(jax.random.PRNGKey(1), jnp.zeros((n, dim)), gaussian_energy(0.0, s)),
                 np.float64).ravel()
  exact = s**2 / (1 - eps / (4 * s**2))
  standard_error = exact * np.sqrt(2 / (z.size - 1))
  assert abs(z.var(ddof=1) - exact) < Z * standard_error, z.var(ddof=1)
  assert abs(s**2 - exact) > 20 * standard_error  # the test tells the two apart


# DDLS on a 2-D toy: data = 0.8 N((1, 0), 0.6^2 I) + 0.2 N((-1, 0), 0.6^2 I).
MEANS, STD, DATA_WEIGHTS = jnp.array([[1.0, 0.0], [-1.0, 0.0]]), 0.6, jnp.array([0.8, 0.2])


def component_logp(x):
  sq = jnp.sum((x[:, None, :] - MEANS[None]) ** 2, axis=-1)
  return -0.5 * sq / STD**2 - 2 * jnp.log(STD) - jnp.log(2 * jnp.pi)


def mixture_logp(x, weights):
  return logsumexp(component_logp(x) + jnp.log(weights), axis=1)


@jax.jit  # one program instead of a dozen compiled eager operations
def _first_responsibility(x):
  return jax.nn.softmax(component_logp(x) + jnp.log(DATA_WEIGHTS), axis=1)[:, 0]


def first_weight_estimate(x):
  """Mean responsibility of the first component under the data's mixture: its expectation over
  the data is exactly the weight 0.8. Returns (estimate, standard error)."""
  r = np.asarray(_first_responsibility(x), np.float64)
  return r.mean(), r.std(ddof=1) / np.sqrt(len(r))


# A linear generator: latent N(0, I) pushed to N(B, A A^T), a density known in closed form.
A, B = np.array([[1.2, 0.3], [-0.2, 0.7]]), np.array([0.1, -0.1])
PRECISION, LOGDET = np.linalg.inv(A @ A.T), np.linalg.slogdet(A @ A.T)[1]


def linear_generator(z):
  return z @ A.T + B


def linear_generator_logp(x):
  d = x - B
  return -0.5 * jnp.einsum('bi,ij,bj->b', d, PRECISION, d) - 0.5 * LOGDET - np.log(2 * np.pi)


def exact_logit_of_linear_generator(x):
  return mixture_logp(x, DATA_WEIGHTS) - linear_generator_logp(x)


EQUAL_WEIGHTS = jnp.array([0.5, 0.5])


def exact_logit_of_equal_mixture(x):
  return mixture_logp(x, DATA_WEIGHTS) - mixture_logp(x, EQUAL_WEIGHTS)


def equal_mixture_energy(x):
  # DDLS with the identity generator and the generator's distribution as the "prior".
  return -mixture_logp(x, EQUAL_WEIGHTS) - exact_logit_of_equal_mixture(x)


@pytest.mark.parametrize('generator', ['linear', 'equal_mixture'])
def test_ddls_with_exact_discriminator_recovers_the_data_weights(generator):
  """Exact d = log p_data - log p_g: the chain on -log p0(z) - d(G(z)) pushed by G is the
  data's mixture (weights 0.8, 0.2), whereas G alone gives far from 0.8 (0.60 and 0.55)."""
  n = 4000
  if generator == 'linear':
    z0 = np.float32(np.random.default_rng(2).normal(size=(n, 2)))
    energy, push = mcmc.latent_energy(linear_generator, exact_logit_of_linear_generator), \
        linear_generator
  else:
    rng = np.random.default_rng(3)
    pick = rng.random((n, 1)) < 0.5
    z0 = np.float32(np.where(pick, MEANS[0], MEANS[1]) + STD * rng.normal(size=(n, 2)))
    energy, push = equal_mixture_energy, lambda x: x
  sampler = mcmc.get_langevin_sampler(400, mcmc.decay(0.1, 0.5, 100))
  z = sampler(jax.random.PRNGKey(5), z0, energy)
  before, _ = first_weight_estimate(push(z0))
  after, standard_error = first_weight_estimate(push(z))
  assert abs(after - 0.8) < Z * standard_error, (after, standard_error)
  assert abs(before - 0.8) > 0.15, before


def test_latent_energy_is_the_prior_minus_the_logit():
  z = jnp.asarray(np.random.default_rng(6).normal(size=(5, 2, 3)), jnp.float32)
  energy = mcmc.latent_energy(lambda z: 2 * z, lambda x: jnp.sum(x, axis=(1, 2)))
  np.testing.assert_allclose(jax.jit(energy)(z), 0.5 * jnp.sum(z**2, axis=(1, 2))
                             - 2 * jnp.sum(z, axis=(1, 2)), rtol=1e-6)


def test_schedule_recording_and_gradient_forms():
  """eps_k = eps * factor^(k // every); with zero energy, the state after k moves from 0 has
  variance sum_{j<k} eps_j, checked at the recorded steps (given out of order)."""
  schedule = mcmc.decay(1.0, 0.5, 2)
  np.testing.assert_array_equal(schedule.values(6), [1, 1, 0.5, 0.5, 0.25, 0.25])
  np.testing.assert_array_equal(mcmc.constant(0.3).values(3), np.float32([0.3] * 3))
  n, record = 20000, (6, 0, 2, 3)
  sampler = mcmc.get_langevin_sampler(6, schedule, record_steps=record)
  z, chain = sampler(jax.random.PRNGKey(7), jnp.zeros((n, 1)), lambda z: jnp.zeros(z.shape[0]))
  assert chain.shape == (len(record), n, 1)
  np.testing.assert_array_equal(chain[0], z)
  np.testing.assert_array_equal(chain[1], 0.0)
  cumulative = np.concatenate([[0.0], np.cumsum(schedule.values(6))])
  for slot, k in enumerate(record[2:], start=2):
    expected = cumulative[k]
    assert abs(float(jnp.var(chain[slot])) - expected) < Z * expected * np.sqrt(2 / n), k

  # The same chain from the gradient itself.
  energy = gaussian_energy(1.0, 2.0)
  by_energy = mcmc.get_langevin_sampler(10, mcmc.constant(0.1))(
      jax.random.PRNGKey(8), jnp.zeros((4, 3)), energy)
  by_grad = mcmc.get_langevin_sampler(10, mcmc.constant(0.1))(
      jax.random.PRNGKey(8), jnp.zeros((4, 3)), grad_fn=lambda z: (z - 1.0) / 4.0)
  np.testing.assert_allclose(by_energy, by_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('make,match', [
    (lambda: mcmc.constant(0.0), r'step size eps=0\.0 must be a positive'),
    (lambda: mcmc.constant(-1e-3), 'must be a positive'),
    (lambda: mcmc.constant(float('nan')), 'must be a positive'),
    (lambda: mcmc.decay(0.1, 0.0, 10), r'decay factor factor=0\.0 must be a positive'),
    (lambda: mcmc.decay(0.1, -0.5, 10), 'decay factor'),
    (lambda: mcmc.decay(0.1, 0.5, -1), 'decay period every=-1'),
    (lambda: mcmc.get_langevin_sampler(5, mcmc.constant(0.1), record_steps=(6,)),
     r'record_steps must be distinct steps in \[0, 5\]'),
    (lambda: mcmc.get_langevin_sampler(-1, mcmc.constant(0.1)), 'n_steps=-1'),
])
def test_bad_settings_are_refused_with_one_line(make, match):
  with pytest.raises(errors.ArgumentError, match=match) as info:
    make()
  assert '\n' not in str(info.value)


_SHARDED = textwrap.dedent('''
  import json
  import jax, jax.numpy as jnp, numpy as np
  from scoresde_jax import mcmc, parallel
  mesh = parallel.make_mesh()
  sharding = parallel.data_sharding(mesh)
  energy = lambda z: 0.5 * jnp.sum((z - 1.0) ** 2, axis=(1, 2))
  z0 = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3, 2)), jnp.float32)
  schedule = mcmc.decay(0.1, 0.5, 5)
  one, chain_one = mcmc.get_langevin_sampler(20, schedule, (0, 10, 20))(
      jax.random.PRNGKey(1), z0, energy)
  eight, chain_eight = mcmc.get_langevin_sampler(20, schedule, (0, 10, 20), sharding=sharding)(
      jax.random.PRNGKey(1), jax.device_put(z0, sharding), energy)
  print('RESULT' + json.dumps({
      'devices': mesh.size, 'shards': len(eight.addressable_shards),
      'shard_shape': list(eight.addressable_shards[0].data.shape),
      'diff': float(jnp.abs(one - eight).max()),
      'chain_diff': float(jnp.abs(chain_one - chain_eight).max())}))
''')


def test_sharded_batch_gives_the_single_device_chain():
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', _SHARDED], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT', 1)[1])
  assert out['devices'] == 8 and out['shards'] == 8 and out['shard_shape'] == [2, 3, 2]
  # Per-example arithmetic only: the same numbers up to float rounding of fused operations.
  assert out['diff'] < 1e-5 and out['chain_diff'] < 1e-5, out
