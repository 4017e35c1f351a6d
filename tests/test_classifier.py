"""The noise-conditional Wide-ResNet classifier, its training and its use in conditional sampling."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
from scoresde_jax import controllable, datasets, errors, sde_lib
from scoresde_jax.models import wideresnet_noise_conditional as wrn
from scoresde_jax.run import networks, train_classifier as tc

from run_utils import leaves_equal, set_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 200


def tiny_config(**overrides):
  config = configs.load_config(os.path.join(ROOT, 'configs/ve/digits_classifier.py'))
  c = config.classifier
  c.depth, c.width, c.num_frequencies = 10, 1, 16
  c.batch_size = 64
  c.n_iters = TRAIN_STEPS
  c.log_freq = 100
  c.eval_freq = 10_000
  c.snapshot_freq = TRAIN_STEPS
  c.snapshot_freq_for_preemption = TRAIN_STEPS
  c.warmup = 50
  c.ema_rate = 0.9
  return set_keys(config, overrides)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A classifier trained for TRAIN_STEPS steps on digits: (config, workdir, state)."""
  config = tiny_config()
  workdir = str(tmp_path_factory.mktemp('classifier_run'))
  state = tc.train_classifier(config, workdir)
  return config, workdir, state


def test_network_shape_conditioning_and_independence():
  config = tiny_config()
  model, params = networks.init_classifier(jax.random.PRNGKey(0), config)
  apply = jax.jit(lambda x, s: model.apply({'params': params}, x, s))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 1))
  low = apply(x, jnp.full((3,), 0.01))
  high = apply(x, jnp.full((3,), 5.0))
  assert low.shape == (3, 10) and low.dtype == jnp.float32
  # The noise scale changes the logits (through every block's embedding bias).
  assert float(jnp.max(jnp.abs(low - high))) > 1e-2
  # Examples are independent (GroupNorm, no batch statistics): one example alone gives the
  # same logits as inside a batch with other noise scales.
  mixed = apply(x, jnp.array([0.01, 5.0, 0.3]))
  alone = apply(x[1:2], jnp.array([5.0]))
  np.testing.assert_allclose(mixed[0], low[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mixed[1], alone[0], rtol=1e-5, atol=1e-5)
  # The embedding is [sin, cos](2 pi W log sigma) (numpy, from the stored frequencies).
  w = np.asarray(params['fourier']['W'], np.float64)
  sig = np.array([0.01, 5.0])
  want = np.concatenate([np.sin(2 * np.pi * np.log(sig)[:, None] * w),
                         np.cos(2 * np.pi * np.log(sig)[:, None] * w)], -1)
  got = wrn.FourierFeatures(16, 16.0).apply({'params': params['fourier']}, jnp.log(jnp.asarray(sig)))
  np.testing.assert_allclose(got, want, atol=2e-4)
  # Invariance to the per-image affine map the network standardizes away.
  shifted = apply(3.0 * x + 0.5, jnp.full((3,), 0.01))
  np.testing.assert_allclose(shifted, low, rtol=1e-3, atol=1e-3)


def test_depth_and_config_errors():
  config = tiny_config(**{'classifier.depth': 12})
  with pytest.raises(ValueError, match='6 n \\+ 4'):
    networks.init_classifier(jax.random.PRNGKey(0), config)
  plain = configs.load_config(os.path.join(ROOT, 'configs/ve/digits.py'))
  with pytest.raises(ValueError, match='no `classifier` section'):
    networks.get_classifier(plain)


def test_classifier_inputs_closed_forms():
  """VE: identity; VP / sub-VP: x / alpha with sigma = std / alpha (closed-form schedules)."""
  x = jnp.ones((2, 8, 8, 1))
  t = jnp.array([0.3, 0.9])
  xv, s = tc.classifier_inputs(sde_lib.VESDE(0.01, 10.0), x, t)
  np.testing.assert_allclose(xv, x)
  np.testing.assert_allclose(s, 0.01 * 1000.0 ** np.asarray(t), rtol=1e-5)
  tn = np.asarray(t, np.float64)
  alpha = np.exp(-0.25 * tn**2 * (20.0 - 0.1) - 0.5 * tn * 0.1)
  for sde, std in ((sde_lib.VPSDE(0.1, 20.0), np.sqrt(1 - alpha**2)),
                   (sde_lib.subVPSDE(0.1, 20.0), 1 - alpha**2)):
    xv, s = tc.classifier_inputs(sde, x, t)
    np.testing.assert_allclose(np.asarray(xv)[:, 0, 0, 0], 1 / alpha, rtol=1e-4)
    np.testing.assert_allclose(s, std / alpha, rtol=1e-4)


def test_training_reaches_high_accuracy_at_small_noise(trained):
  """200 steps of WRN-10-1 on digits. Measured (seeds 42 and 1): 0.972 / 0.972 at sigma 0.01,
  0.956 / 0.961 at sigma 0.1, 0.11 / 0.09 at sigma 10 (chance 0.1)."""
  config, _, state = trained
  acc = tc.eval_accuracy(config, state.ema_params, (0.01, 0.1, 10.0))
  assert acc[0.01] > 0.85 and acc[0.1] > 0.85, acc
  # At sigma = sigma_max the digits are drowned in noise: about chance.
  assert acc[10.0] < 0.3, acc


def test_log_prob_fn_from_workdir_classifies_and_has_finite_gradients(trained):
  config, workdir, state = trained
  log_prob_fn = tc.get_classifier_log_prob_fn(config, workdir)
  # Restored EMA parameters are the trained ones.
  assert leaves_equal(log_prob_fn.args[0], state.ema_params)
  images, labels = datasets.load_digits('eval', 8)
  x = jnp.asarray(images[:64])
  y = jnp.asarray(labels[:64])
  t = jnp.zeros((64,))  # sigma(0) = sigma_min = 0.01
  sde = sde_lib.VESDE(0.01, 10.0)
  # Jitted calls (the Partial's parameters are inputs): one compilation per shape.
  call = jax.jit(lambda f, x, t: f(x, t))
  xt = x + 0.01 * jax.random.normal(jax.random.PRNGKey(3), x.shape)
  logp = call(log_prob_fn, xt, t)
  assert logp.shape == (64, 10)
  np.testing.assert_allclose(jax.scipy.special.logsumexp(logp, -1), 0.0, atol=1e-5)
  assert float(jnp.mean(jnp.argmax(logp, -1) == y)) > 0.85

  # grad_x log p_t(y | x) through conditional_score_fn (zero score): shape, finite, and a
  # central finite difference of the classifier along a random direction.
  zero_score = lambda x, t: jnp.zeros_like(x)
  tt = jnp.full((64,), 0.5)
  xt = x + sde.marginal_prob(x, tt)[1][0] * jax.random.normal(jax.random.PRNGKey(4), x.shape)
  grad = call(controllable.conditional_score_fn(zero_score, log_prob_fn, y, scale=1.0), xt, tt)
  assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.max(jnp.abs(grad))) > 0
  v = jax.random.normal(jax.random.PRNGKey(5), x.shape)
  v = v / jnp.sqrt(jnp.sum(v**2, axis=(1, 2, 3), keepdims=True))
  h = 1e-3
  pick = lambda lp: jnp.take_along_axis(lp, y[:, None], 1)[:, 0]
  fd = (pick(call(log_prob_fn, xt + h * v, tt)) - pick(call(log_prob_fn, xt - h * v, tt))) / (2 * h)
  directional = jnp.sum(grad * v, axis=(1, 2, 3))
  np.testing.assert_allclose(directional, fd, rtol=5e-2, atol=5e-3)
  # Scale multiplies the classifier term.
  grad2 = call(controllable.conditional_score_fn(zero_score, log_prob_fn, y, scale=2.0), xt, tt)
  np.testing.assert_allclose(grad2, 2 * grad, rtol=1e-5, atol=1e-6)


def test_resumed_run_equals_uninterrupted(tmp_path, caplog):
  """Bit for bit, the resumed start running the step its first start compiled and stored
  (compiled before the straight run puts it in the persistent cache, whose executables are
  not stored)."""
  overrides = {'classifier.n_iters': 6, 'classifier.snapshot_freq': 3,
               'classifier.snapshot_freq_for_preemption': 2, 'classifier.eval_freq': 3,
               'classifier.batch_size': 8, 'classifier.log_freq': 2}
  config = tiny_config(**overrides)
  programs = str(tmp_path / 'programs')
  tc.train_classifier(config, str(tmp_path / 'resumed'), max_steps=4,  # "killed" at step 4
                      program_dir=programs)
  straight = tc.train_classifier(config, str(tmp_path / 'straight'))
  with caplog.at_level('INFO'):
    resumed = tc.train_classifier(config, str(tmp_path / 'resumed'), program_dir=programs)
  assert 'Loaded the compiled program classifier_step-' in caplog.text
  assert int(resumed.step) == int(straight.step) == 6
  assert leaves_equal(resumed, straight)
  # A longer schedule resumes; another network is refused.
  longer = tc.train_classifier(tiny_config(**{**overrides, 'classifier.n_iters': 7}),
                               str(tmp_path / 'resumed'))
  assert int(longer.step) == 7
  with pytest.raises(errors.WorkdirConfigMismatch, match='classifier.width'):
    tc.train_classifier(tiny_config(**{**overrides, 'classifier.width': 2}),
                        str(tmp_path / 'resumed'))


def test_missing_checkpoints_are_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match='train_classifier'):
    tc.get_classifier_log_prob_fn(tiny_config(), str(tmp_path))
