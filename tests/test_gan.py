"""The GAN run (--mode train_gan) and DDLS sampling (--mode sample_gan) on tiny configs:
exact resumption, snapshots, the DDLS files, and the one-line mistakes."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
import main
from scoresde_jax import checkpoints, errors
from scoresde_jax.models import gan
from scoresde_jax.run import ddls, train_gan

from run_utils import leaves_equal, set_keys
from test_train import _tensorboard_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_gan_config(**overrides):
  config = configs.load_config(os.path.join(ROOT, 'configs/gan/digits.py'))
  set_keys(config, {'gan.latent_dim': 4, 'gan.g_features': 4, 'gan.d_features': 4,
                    'gan.batch_size': 8, 'gan.n_iters': 6, 'gan.log_freq': 2,
                    'gan.snapshot_freq': 3, 'gan.snapshot_freq_for_preemption': 2,
                    'gan.r1_gamma': 0.0, 'gan.ema_rate': 0.9,
                    'ddls.n_steps': 5, 'ddls.record_steps': (2,), 'ddls.batch_size': 8})
  return set_keys(config, overrides)


def test_resumed_gan_run_equals_uninterrupted_and_ddls_writes_the_chain(tmp_path, caplog):
  """Bit for bit (the resumed start from its stored compiled step): both networks, the EMA,
  both Adam states, step and key; then DDLS on the finished run (R1 off: its double gradient
  would add seconds of compilation; the penalty is checked exactly below)."""
  config = tiny_gan_config()
  # The killed run first: it compiles the step (not yet in the persistent compilation cache,
  # whose executables are not stored) and stores it for the resumed start.
  programs = str(tmp_path / 'programs')
  main.run('train_gan', config, str(tmp_path / 'resumed'), max_steps=2,  # "killed" at step 2
           program_dir=programs)
  assert checkpoints.RunCheckpoints(str(tmp_path / 'resumed')).latest_step() == 2
  with caplog.at_level('INFO'):
    straight = train_gan.train_gan(config, str(tmp_path / 'straight'))
  losses = [float(v) for v in re.findall(r'GAN step \d+/6: loss (\S+),', caplog.text)]
  assert len(losses) == 4 and np.all(np.isfinite(losses)), caplog.text  # steps 2, 3, 4, 6
  # Every metric of the step reaches TensorBoard; the logged loss is D's plus G's.
  scalars = _tensorboard_scalars(tmp_path / 'straight')
  for tag in ('gan_loss', 'd_loss', 'g_loss', 'r1', 'grad_norm', 'g_grad_norm'):
    assert sorted(scalars[tag]) == [2, 3, 4, 6], tag
  for step in (2, 3, 4, 6):
    assert scalars['gan_loss'][step] == pytest.approx(
        scalars['d_loss'][step] + scalars['g_loss'][step], rel=1e-5)
  caplog.clear()
  with caplog.at_level('INFO'):
    resumed = train_gan.train_gan(config, str(tmp_path / 'resumed'), program_dir=programs)
  assert 'Loaded the compiled program gan_step-' in caplog.text
  assert int(resumed.step) == int(straight.step) == 6
  assert leaves_equal(resumed, straight)
  assert checkpoints.RunCheckpoints(str(tmp_path / 'straight')).snapshot_steps() == [3, 6]
  for name in ('sample.png', 'ema_sample.png', 'sample.npz'):
    assert (tmp_path / 'straight' / 'samples' / 'iter_6' / name).exists()
  samples = np.load(tmp_path / 'straight' / 'samples' / 'iter_6' / 'sample.npz')['samples']
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8

  # 12 chains: a full batch of 8 and a partial one.
  main.run('sample_gan', config, str(tmp_path / 'straight'), num_samples=12)
  out = tmp_path / 'straight' / 'eval' / 'ddls'
  with np.load(out / 'samples.npz') as f:
    assert f['record_steps'].tolist() == [0, 2, 5]
    assert f['images'].shape == (3, 12, 8, 8, 1) and f['images'].dtype == np.uint8
    assert f['latents'].shape == (3, 12, 4) and f['logits'].shape == (3, 12)
    assert np.all(np.isfinite(f['logits']))
    # The chain moved, and its first state is the generator's own sample.
    assert not np.array_equal(f['latents'][0], f['latents'][-1])
  for name in ('chain.png', 'step_0.png', 'step_2.png', 'step_5.png'):
    assert (out / name).exists()


def test_losses_and_r1_penalty_of_a_linear_discriminator():
  """d(x) = <w, x> + b: the logistic losses in closed form, and R1 = |w|^2 for every x."""
  rng = np.random.default_rng(0)
  w, real, fake = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                   for shape in ((8, 8, 1), (5, 8, 8, 1), (5, 8, 8, 1)))
  d_apply = lambda params, x: jnp.sum(x * params['w'], axis=(1, 2, 3)) + params['b']
  params = {'w': w, 'b': jnp.float32(0.3)}
  d_real, d_fake = d_apply(params, real), d_apply(params, fake)
  logistic = np.mean(np.log1p(np.exp(-d_real))) + np.mean(np.log1p(np.exp(d_fake)))
  loss, r1 = jax.jit(lambda p: gan.discriminator_loss(d_apply, p, real, fake, 10.0))(params)
  np.testing.assert_allclose(r1, jnp.sum(w**2), rtol=1e-5)
  np.testing.assert_allclose(loss, logistic + 5.0 * jnp.sum(w**2), rtol=1e-5)
  loss, r1 = gan.discriminator_loss(d_apply, params, real, fake)
  np.testing.assert_allclose(loss, logistic, rtol=1e-5)
  assert float(r1) == 0.0
  np.testing.assert_allclose(gan.generator_loss(d_apply, params, fake),
                             np.mean(np.log1p(np.exp(-d_fake))), rtol=1e-5)


def test_wrong_config_for_the_mode_is_one_clear_error(tmp_path):
  with pytest.raises(errors.ConfigError, match=r'--mode train is for score models and this is '
                     r'a GAN config'):
    main.run('train', tiny_gan_config(), str(tmp_path / 'a'))
  score_config = configs.load_config(os.path.join(ROOT, 'configs/ve/digits.py'))
  with pytest.raises(errors.ConfigError, match=r'not a GAN config .*configs/gan/digits.py'):
    main.run('train_gan', score_config, str(tmp_path / 'b'))
  with pytest.raises(errors.ConfigError, match=r'not a GAN config'):
    main.run('sample_gan', score_config, str(tmp_path / 'b'))
  assert not os.listdir(tmp_path)  # refused before anything was written


@pytest.mark.parametrize('overrides,match', [
    ({'ddls.step_size': 0.0}, r'step size ddls.step_size=0\.0 must be a positive'),
    ({'ddls.decay': -0.5}, r'decay factor ddls.decay=-0\.5 must be a positive'),
    ({'ddls.record_steps': (9,)}, r'ddls.record_steps must be distinct steps in \[0, 5\]'),
    ({'gan.g_features': 0}, r'gan.g_features >= 1'),
    ({'data.image_size': 12}, r'data.image_size=12'),
    ({'gan.snapshot_freq': 0}, r'gan.snapshot_freq=0 must be positive'),
])
def test_bad_gan_and_ddls_values_name_their_key(overrides, match):
  config = tiny_gan_config(**overrides)
  with pytest.raises(errors.ConfigError, match=match):
    train_gan.validate_config(config, 1)
    ddls.record_steps(config)


def test_sample_gan_without_a_run_says_to_train_first(tmp_path):
  with pytest.raises(errors.CheckpointNotFoundError, match='--mode train_gan'):
    ddls.sample_gan(tiny_gan_config(), str(tmp_path))
