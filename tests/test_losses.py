"""Objectives at the exact score equal their analytic minima; training recovers optima.

Data: x0 ~ N(mu, s^2 I) in D dimensions. Under an SDE with kernel x_t = a x0 + sigma z,
p_t = N(a mu, (a^2 s^2 + sigma^2) I), and at the exact score every per-dimension residual
of the objectives is Gaussian with a variance known in closed form (see each test).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

from configs import load_config
from scoresde_jax import losses, sde_lib
from scoresde_jax.run import setup

MU = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
S2 = 0.3
D = len(MU)
SDES = [sde_lib.VESDE(0.01, 50.0, 1000), sde_lib.VPSDE(0.1, 20.0, 1000),
        sde_lib.subVPSDE(0.1, 20.0, 1000)]


def _a_sigma_g2(sde, t):
  """Kernel mean coefficient a(t), std sigma(t) and g(t)^2, from the paper's formulas."""
  if isinstance(sde, sde_lib.VESDE):
    sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    return 1.0, sigma, sigma**2 * 2 * math.log(sde.sigma_max / sde.sigma_min)
  beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
  int_beta = sde.beta_min * t + 0.5 * t**2 * (sde.beta_max - sde.beta_min)
  if isinstance(sde, sde_lib.VPSDE):
    return math.exp(-int_beta / 2), math.sqrt(-math.expm1(-int_beta)), beta
  return math.exp(-int_beta / 2), -math.expm1(-int_beta), beta * -math.expm1(-2 * int_beta)


def exact_apply_fn(sde, continuous=True):
  """A 'network' whose score is exact, written in each SDE's output convention."""

  def apply_fn(params, x, labels, rng):
    if isinstance(sde, sde_lib.VESDE):
      sigma = labels if continuous else sde.discrete_sigmas[::-1][labels]
      return -(x - MU) / (S2 + sigma[:, None] ** 2)  # VE networks output the score
    if continuous or isinstance(sde, sde_lib.subVPSDE):
      mean, std = sde.marginal_prob(jnp.ones((x.shape[0], 1)), labels / 999)
      a = mean[:, 0]
    else:
      i = labels.astype(jnp.int32)
      a, std = sde.sqrt_alphas_cumprod[i], sde.sqrt_1m_alphas_cumprod[i]
    score = -(x - a[:, None] * MU) / (a[:, None] ** 2 * S2 + std[:, None] ** 2)
    return -std[:, None] * score  # VP networks predict the noise

  return apply_fn


def monte_carlo(loss_fn, batch_size=20000, repeats=10):
  """Mean of `repeats` independent loss values and its standard error."""
  rs = np.random.RandomState(0)
  values = []
  for r in range(repeats):
    batch = jnp.asarray(MU + math.sqrt(S2) * rs.randn(batch_size, D).astype(np.float32))
    values.append(float(jax.jit(loss_fn)(None, batch, jax.random.PRNGKey(r))))
  return np.mean(values), np.std(values, ddof=1) / math.sqrt(repeats)


@pytest.mark.parametrize('sde', SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize('likelihood_weighting', [False, True])
def test_dsm_loss_at_exact_score_is_its_minimum(sde, likelihood_weighting):
  """Residual std * score + z has per-dimension variance a^2 s^2 / (a^2 s^2 + sigma^2), so the
  loss (reduce_mean) is E_t of that, times g^2 / sigma^2 with likelihood weighting."""
  eps = 1e-5

  def integrand(t):
    a, sigma, g2 = _a_sigma_g2(sde, t)
    value = a**2 * S2 / (a**2 * S2 + sigma**2)
    return value * g2 / sigma**2 if likelihood_weighting else value

  expected = integrate.quad(integrand, eps, 1.0, limit=200, points=[1e-4, 1e-3, 1e-2])[0] / (1 - eps)
  loss_fn = losses.get_sde_loss_fn(sde, exact_apply_fn(sde), continuous=True, reduce_mean=True,
                                   likelihood_weighting=likelihood_weighting, eps=eps)
  mean, stderr = monte_carlo(loss_fn)
  assert abs(mean - expected) < 4 * stderr + 1e-3 * expected, (mean, expected, stderr)


def test_reduce_sum_is_half_the_sum():
  sde = SDES[1]
  batch = jnp.asarray(MU + np.random.RandomState(1).randn(64, D).astype(np.float32))
  mean_loss = losses.get_sde_loss_fn(sde, exact_apply_fn(sde), reduce_mean=True)
  sum_loss = losses.get_sde_loss_fn(sde, exact_apply_fn(sde), reduce_mean=False)
  key = jax.random.PRNGKey(0)
  np.testing.assert_allclose(sum_loss(None, batch, key), 0.5 * D * mean_loss(None, batch, key),
                             rtol=1e-5)


def test_smld_loss_at_exact_score():
  """sigma^2 |score - target|^2 has per-dimension mean s^2 / (s^2 + sigma^2); the loss is its
  half sum over dimensions, averaged over the N noise levels."""
  sde = sde_lib.VESDE(0.01, 50.0, 100)
  sig = np.exp(np.linspace(np.log(0.01), np.log(50.0), 100))
  expected = 0.5 * D * np.mean(S2 / (S2 + sig**2))
  loss_fn = losses.get_smld_loss_fn(sde, exact_apply_fn(sde, continuous=False))
  mean, stderr = monte_carlo(loss_fn)
  assert abs(mean - expected) < 4 * stderr, (mean, expected, stderr)


def test_ddpm_loss_at_exact_score():
  """|eps_hat - eps|^2 per dimension has mean a^2 s^2 / (a^2 s^2 + 1 - a^2), a^2 = alpha-bar."""
  sde = sde_lib.VPSDE(0.1, 20.0, 1000)
  abar = np.cumprod(1 - np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
  expected = np.mean(abar * S2 / (abar * S2 + 1 - abar))
  loss_fn = losses.get_ddpm_loss_fn(sde, exact_apply_fn(sde, continuous=False), reduce_mean=True)
  mean, stderr = monte_carlo(loss_fn)
  assert abs(mean - expected) < 4 * stderr, (mean, expected, stderr)


def test_loss_selection_errors():
  apply_fn = exact_apply_fn(SDES[0])
  with pytest.raises(ValueError, match='VE SDE'):
    losses.get_smld_loss_fn(SDES[1], apply_fn)
  with pytest.raises(ValueError, match='VP SDE'):
    losses.get_ddpm_loss_fn(SDES[0], apply_fn)
  with pytest.raises(ValueError, match='continuous'):
    losses.get_loss_fn(SDES[0], apply_fn, continuous=False, likelihood_weighting=True)
  with pytest.raises(ValueError, match='VESDE and VPSDE'):
    losses.get_loss_fn(SDES[2], apply_fn, continuous=False)


def _gaussian_model(sde):
  """Score of N(m, v I) diffused by `sde`, in the SDE's network convention; params (m, log v)."""

  def apply_fn(params, x, labels, rng):
    m, v = params['m'], jnp.exp(params['log_v'])
    if isinstance(sde, sde_lib.VESDE):
      return -(x - m) / (v + labels[:, None] ** 2)
    mean, std = sde.marginal_prob(jnp.ones((x.shape[0], 1)), labels / 999)
    a = mean[:, 0][:, None]
    std = std[:, None]
    return std * (x - a * m) / (a**2 * v + std**2)

  return apply_fn


@pytest.mark.parametrize('sde', SDES[:2], ids=lambda s: type(s).__name__)
def test_training_recovers_the_gaussian(sde):
  """Adam through the train step (warmup, clipping, EMA) on the DSM loss, whose minimizer
  over this model family is the data distribution: m -> mu, v -> s^2."""
  loss_fn = losses.get_sde_loss_fn(sde, _gaussian_model(sde), reduce_mean=True)
  optimizer = losses.get_optimizer(lr=5e-2, warmup=20, grad_clip=10.0)
  step = losses.get_step_fn(loss_fn, optimizer, ema_rate=0.9)
  multi_step = jax.jit(losses.get_multi_step_fn(step))
  params = {'m': jnp.zeros(D), 'log_v': jnp.zeros(())}
  state = losses.init_train_state(params, optimizer, jax.random.PRNGKey(0))
  rs = np.random.RandomState(0)
  for _ in range(40):
    batches = MU + math.sqrt(S2) * rs.randn(10, 512, D).astype(np.float32)
    state, metrics = multi_step(state, jnp.asarray(batches))
  assert int(state.step) == 400
  assert metrics['loss'].shape == (10,)
  for p in (state.params, state.ema_params):
    np.testing.assert_allclose(p['m'], MU, atol=0.08)
    np.testing.assert_allclose(np.exp(p['log_v']), S2, rtol=0.1)


def test_first_update_has_zero_learning_rate_and_ema():
  """As the reference: lr * min(step / warmup, 1) with step from 0; EMA of new params."""
  loss_fn = lambda p, batch, rng: jnp.sum((p['w'] - batch.mean()) ** 2)
  optimizer = losses.get_optimizer(lr=1.0, warmup=2, grad_clip=-1.0)
  step = jax.jit(losses.get_step_fn(loss_fn, optimizer, ema_rate=0.5))
  state = losses.init_train_state({'w': jnp.zeros(())}, optimizer, jax.random.PRNGKey(0))
  batch = jnp.ones((4, 1))
  state, _ = step(state, batch)
  assert float(state.params['w']) == 0.0
  state, _ = step(state, batch)
  # Adam's first non-zero step moves by lr * 0.5 (warmup) * m_hat / sqrt(v_hat) = 0.5.
  np.testing.assert_allclose(state.params['w'], 0.5, rtol=1e-4)  # float32 bias correction
  np.testing.assert_allclose(state.ema_params['w'], 0.25, rtol=1e-4)


def test_cosine_decay_after_warmup_reaches_zero_at_the_last_step():
  schedule = losses.learning_rate_schedule(2.0, warmup=10, decay_steps=110)
  rates = np.asarray([schedule(jnp.asarray(c)) for c in (0, 5, 10, 60, 85, 110, 200)])
  # Warmup ramp, the peak, half way down the cosine (cos(pi/2) = 0), a quarter left, zero.
  np.testing.assert_allclose(rates, [0, 1, 2, 1, 2 * 0.5 * (1 + np.cos(0.75 * np.pi)), 0, 0],
                             atol=1e-6)
  # Without decay_steps the rate after warmup stays constant, as before.
  assert float(losses.learning_rate_schedule(2.0, warmup=10)(jnp.asarray(10**6))) == 2.0


def test_cosine_decay_config_moves_the_optimizer_along_the_schedule():
  """optim.cosine_decay: under a constant gradient every Adam update moves a parameter by
  the learning rate of its step (m_hat / sqrt(v_hat) = 1), so the moves are the schedule:
  from lr down a half cosine to 0 at training.n_iters."""
  config = load_config('configs/ve/digits.py')
  config.optim.lr, config.optim.warmup, config.optim.grad_clip = 1.0, 0, -1.0
  config.training.n_iters = 100
  config.optim.cosine_decay = True
  optimizer = setup.get_optimizer(config)
  params = {'w': jnp.zeros(())}
  opt_state = optimizer.init(params)
  update = jax.jit(lambda s: optimizer.update({'w': jnp.ones(())}, s, params))
  moves = []
  for _ in range(101):
    updates, opt_state = update(opt_state)
    moves.append(-float(updates['w']))
  expected = 0.5 * (1 + np.cos(np.pi * np.minimum(np.arange(101) / 100, 1)))
  np.testing.assert_allclose(moves, expected, rtol=1e-4, atol=1e-6)  # Adam eps, float32
  schedule = setup.learning_rate_schedule(config)  # what the progress log reports
  np.testing.assert_allclose([schedule(jnp.asarray(k)) for k in (0, 50, 100)], [1, 0.5, 0],
                             atol=1e-6)


def test_step_count_does_not_depend_on_fusion():
  """n steps fused into one scan give the same state as n single steps."""
  sde = SDES[1]
  loss_fn = losses.get_sde_loss_fn(sde, _gaussian_model(sde))
  optimizer = losses.get_optimizer(lr=1e-2, warmup=3, grad_clip=1.0)
  step = losses.get_step_fn(loss_fn, optimizer)
  params = {'m': jnp.zeros(D), 'log_v': jnp.zeros(())}
  batches = jnp.asarray(np.random.RandomState(0).randn(4, 32, D).astype(np.float32))
  fused, _ = jax.jit(losses.get_multi_step_fn(step))(
      losses.init_train_state(params, optimizer, jax.random.PRNGKey(3)), batches)
  single = losses.init_train_state(params, optimizer, jax.random.PRNGKey(3))
  jstep = jax.jit(step)
  for b in batches:
    single, _ = jstep(single, b)
  for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(single)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert isinstance(optimizer, optax.GradientTransformation)
