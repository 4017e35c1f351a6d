"""Inception preprocessing: the resize and scaling of each FID implementation, and statistics
that record theirs.

  'pytorch_fid'  x / 255, jax.image.resize bilinear (half-pixel centers, no antialias), 2x - 1
  'tf'           TF's legacy bilinear resize (tf.compat.v1.image.resize_bilinear,
                 align_corners=False, half_pixel_centers=False), then x / 128 - 1
  'clean_fid'    PIL bicubic (antialiased) per float32 channel, clipped, then x / 128 - 1

Fixture tf_legacy_resize.npz: outputs of TensorFlow 2.21's `tf.compat.v1.image.resize_bilinear
(align_corners=False, half_pixel_centers=False)` on the inputs stored beside them (random uint8
images of several sizes, and 1-pixel-high ramps 0..n-1 whose resized values are TF's source
coordinates on a 299-wide grid, clamped at the edge); `python tests/test_inception_preprocessing.py`
writes it again. With SCORESDE_TEST_TENSORFLOW=1 (and TensorFlow installed; its import alone
takes ~10 s), `test_tf_legacy_resize_matches_tensorflow` also compares with TF itself on new
random images.

No Inception forward pass: where features are needed, the network is replaced by cheap
statistics of the preprocessed images (`_fake_network`), so the preprocessing, its threading
through `sharded_features` / `compute_activations` / the FID command and the statistics files
are tested without compiling Inception.
"""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from scoresde_jax import errors
from scoresde_jax.evaluation import fid, inception, metrics

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'tf_legacy_resize.npz')
RAMP_SIZES = (2, 8, 28, 32, 64, 256, 300, 512)
IMAGE_CASES = (((2, 9, 14, 3), (23, 17)), ((1, 40, 24, 3), (13, 29)),
               ((1, 11, 11, 3), (11, 11)))


# ---------------------------------------------------------------------------
# TensorFlow's legacy resize: hand-computed, the stored TF outputs, TF itself.
# ---------------------------------------------------------------------------


def _tf_resize(images, size):
  import tensorflow as tf  # Only where TF itself is the reference.
  return tf.compat.v1.image.resize_bilinear(images, size, align_corners=False,
                                            half_pixel_centers=False).numpy()


def make_fixture(path=FIXTURE):
  """Writes the TF fixture (run once with TensorFlow installed)."""
  rs = np.random.RandomState(0)
  out = {}
  for i, (shape, size) in enumerate(IMAGE_CASES):
    out[f'in_{i}'] = rs.randint(0, 256, shape).astype(np.uint8)
    out[f'out_{i}'] = _tf_resize(out[f'in_{i}'], size)
  for n in RAMP_SIZES:
    ramp = np.arange(n, dtype=np.float32).reshape(1, 1, n, 1)
    out[f'ramp_{n}'] = _tf_resize(ramp, (1, inception.INCEPTION_IMAGE_SIZE))[0, 0, :, 0]
  np.savez_compressed(path, **out)


def _both(fn):
  """`fn` eagerly and under jit (shapes static): both must give the expected numbers."""
  return fn, jax.jit(fn)


def test_tf_legacy_resize_hand_computed():
  # 2x2 -> 5x5: scale 2/5, source coordinates 0, .4, .8, 1.2, 1.6; the last two are past the
  # last pixel and clamp to it (upper = min(ceil, in - 1)). A linear image 2r + c is
  # interpolated exactly, so the output is 2 * src_r + clamp(src_c).
  x = np.array([[0., 1.], [2., 3.]], np.float32).reshape(1, 2, 2, 1)
  src = np.array([0.0, 0.4, 0.8, 1.0, 1.0])
  expected = 2 * src[:, None] + src[None, :]
  # 4x4 -> 3x3 (downsizing, no antialiasing): scale 4/3, coordinates 0, 4/3, 8/3.
  y = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  src3 = np.array([0.0, 4 / 3, 8 / 3])
  expected3 = 4 * src3[:, None] + src3[None, :]
  for fn in _both(lambda a, b: (inception.resize_tf_legacy(a, 5),
                                inception.resize_tf_legacy(b, 3))):
    up, down = fn(x, y)
    np.testing.assert_allclose(np.asarray(up)[0, :, :, 0], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(down)[0, :, :, 0], expected3, rtol=0, atol=2e-6)
  # Half-pixel centers (torch / jax) would give other numbers: the two grids do differ.
  half = jax.image.resize(y, (1, 3, 3, 1), 'bilinear', antialias=False)
  assert np.abs(np.asarray(half)[0, :, :, 0] - expected3).min() > 0.8
  # Equal size: the identity, exactly, and `preprocess` does not resize 299x299 images.
  z = np.random.RandomState(1).uniform(0, 255, (2, 7, 7, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(inception.resize_tf_legacy(z, 7)), z)


def test_tf_legacy_resize_matches_stored_tensorflow_outputs():
  with np.load(FIXTURE) as f:
    data = {k: f[k] for k in f.files}
  resize = jax.jit(inception.resize_tf_legacy, static_argnums=1)
  for i, (shape, size) in enumerate(IMAGE_CASES):
    x, expected = data[f'in_{i}'], data[f'out_{i}']
    assert x.shape == shape and expected.shape == (shape[0], *size, 3)
    np.testing.assert_allclose(np.asarray(resize(x, size)), expected, rtol=1e-6, atol=1e-5)
  # TF's source grid for n -> 299 (a ramp 0..n-1 resizes to its coordinates, clamped):
  # the grid's float32 numbers are TF's exactly, and the resize samples it on both axes.
  for n in RAMP_SIZES:
    lower, upper, lerp = inception._tf_legacy_grid(n, 299)
    coords = lower.astype(np.float32) + (upper - lower).astype(np.float32) * lerp
    np.testing.assert_array_equal(coords, data[f'ramp_{n}'])
  ramp = np.arange(32, dtype=np.float32)
  wide = inception.resize_tf_legacy(ramp.reshape(1, 1, 32, 1), (1, 299))[0, 0, :, 0]
  tall = inception.resize_tf_legacy(ramp.reshape(1, 32, 1, 1), (299, 1))[0, :, 0, 0]
  np.testing.assert_array_equal(np.asarray(wide), data['ramp_32'])
  np.testing.assert_array_equal(np.asarray(tall), data['ramp_32'])


def test_tf_legacy_resize_matches_tensorflow():
  if 'tensorflow' not in sys.modules and not os.environ.get('SCORESDE_TEST_TENSORFLOW'):
    # Importing TF takes 8-10 s of the 2-core CI budget; its outputs are in the fixture.
    pytest.skip('TensorFlow itself only with SCORESDE_TEST_TENSORFLOW=1 (or when imported '
                'already); tf_legacy_resize.npz holds its outputs')
  pytest.importorskip('tensorflow')
  rs = np.random.RandomState(2)
  resize = jax.jit(inception.resize_tf_legacy, static_argnums=1)
  for shape in ((2, 32, 32, 3), (1, 512, 384, 3)):  # up; down and not square
    x = rs.randint(0, 256, shape).astype(np.uint8)
    expected = _tf_resize(x, (299, 299))
    got = np.asarray(resize(x, 299))
    # Up to a few float32 roundings of values in [0, 255] (XLA's operation order): 1e-5 of
    # the network's [-1, 1] input, with what `preprocess` then does to both.
    np.testing.assert_allclose(got / 128.0 - 1.0, expected / 128.0 - 1.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(inception.preprocess(x, method='tf')),
                               expected / 128.0 - 1.0, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# pytorch-fid's and clean-fid's resizes; the scalings.
# ---------------------------------------------------------------------------


def test_pytorch_fid_path_is_jax_bilinear_and_the_default():
  x = np.random.RandomState(3).randint(0, 256, (2, 16, 12, 3)).astype(np.uint8)
  expected = 2.0 * jax.image.resize(x.astype(np.float32) / 255.0, (2, 299, 299, 3),
                                    'bilinear', antialias=False) - 1.0
  np.testing.assert_array_equal(np.asarray(inception.preprocess(x)), np.asarray(expected))
  np.testing.assert_array_equal(np.asarray(inception.preprocess(x, method='pytorch_fid')),
                                np.asarray(expected))
  # Under jit XLA fuses the scalings: the same up to float32 rounding.
  jitted = jax.jit(lambda a: inception.preprocess(a, method='pytorch_fid'))(x)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(expected), rtol=0, atol=1e-6)


def _pil_float_bicubic(images, size=299):
  """clean-fid's resize written out: each channel a mode 'F' image, PIL bicubic, clipped."""
  out = np.empty((images.shape[0], size, size, images.shape[3]), np.float32)
  for i, image in enumerate(images.astype(np.float32)):
    for c in range(image.shape[-1]):
      channel = Image.fromarray(image[:, :, c])
      assert channel.mode == 'F'
      out[i, :, :, c] = np.asarray(channel.resize((size, size), Image.BICUBIC)).clip(0, 255)
  return out


def test_clean_fid_resize_is_pil_bicubic_on_the_host():
  rs = np.random.RandomState(4)
  for shape in ((2, 32, 32, 3), (1, 40, 24, 3), (1, 400, 352, 3)):  # up, non-square, down
    x = rs.randint(0, 256, shape).astype(np.uint8)
    got = inception.resize_clean_fid(x)
    assert got.dtype == np.float32 and got.shape == (shape[0], 299, 299, 3)
    np.testing.assert_array_equal(got, _pil_float_bicubic(x))
    np.testing.assert_array_equal(np.asarray(inception.preprocess(x, method='clean_fid')),
                                  got / np.float32(128) - np.float32(1))
  # Not 8-bit: PIL's own uint8 resize (RGB mode) clips between its two passes and rounds, so
  # it differs from clean-fid's float one by more than rounding on sharp images like these.
  rgb = np.asarray(Image.fromarray(x[0]).resize((299, 299), Image.BICUBIC))
  assert np.abs(np.round(got[0]) - rgb).max() > 1
  # PIL is host code: refused under jit unless there is nothing to resize.
  with pytest.raises(ValueError, match='cannot run under jit'):
    jax.jit(lambda a: inception.preprocess(a, method='clean_fid'))(x[:, :32, :32])
  full = rs.randint(0, 256, (1, 299, 299, 3)).astype(np.uint8)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(lambda a: inception.preprocess(a, method='clean_fid'))(full)),
      full / np.float32(128) - np.float32(1))
  assert inception.resize_clean_fid(full) is full


def test_scaling_constants():
  values = np.array([0.0, 1.0, 64.0, 127.5, 128.0, 254.0, 255.0], np.float32)
  x = np.ascontiguousarray(np.broadcast_to(values[:, None, None, None], (7, 299, 299, 3)))
  row = lambda out: np.asarray(out)[:, 0, 0, 0]  # one constant image per value
  # pytorch-fid: 2 x / 255 - 1 (0 -> -1, 255 -> 1).
  np.testing.assert_allclose(row(inception.preprocess(x)), 2 * values / 255 - 1, rtol=0, atol=1e-7)
  assert row(inception.preprocess(x))[[0, -1]].tolist() == [-1.0, 1.0]
  # The TF graph's Sub 128 / Mul 1/128 and clean-fid's (x - 128) / 128: x / 128 - 1, exactly.
  expected = np.array([-1.0, -0.9921875, -0.5, -0.00390625, 0.0, 0.984375, 0.9921875], np.float32)
  for method in ('tf', 'clean_fid'):
    for fn in _both(lambda a, m=method: inception.preprocess(a, method=m)):
      np.testing.assert_array_equal(row(fn(x)), expected)


def test_preprocessing_names():
  assert inception.PREPROCESSING == ('pytorch_fid', 'tf', 'clean_fid')
  assert inception.DEFAULT_PREPROCESSING == 'pytorch_fid'
  for bad in ('torch', 'TF', None):
    with pytest.raises(ValueError, match=r"preprocessing=.* use one of 'pytorch_fid', 'tf'"):
      inception.preprocess(np.zeros((1, 8, 8, 3), np.uint8), method=bad)
  with pytest.raises(ValueError, match='use one of'):
    fid.compute_activations([np.zeros((1, 8, 8, 3), np.uint8)], {}, preprocessing='bilinear')


# ---------------------------------------------------------------------------
# Threading through features, the FID command and statistics files.
# ---------------------------------------------------------------------------


def _fake_features(x):
  """Per-channel mean / std / corner of network inputs `x`: 9 features, no Inception."""
  return jnp.concatenate([x.mean((1, 2)), x.std((1, 2)), x[:, 0, 0]], axis=-1)


@functools.partial(jax.jit, static_argnames=('preprocessing',))
def _fake_network(variables, images, preprocessing):
  """Stands in for `inception._inception_features` (the jitted network)."""
  pool = _fake_features(inception.preprocess(images, method=preprocessing))
  return {'pool_3': pool, 'logits': jnp.zeros((images.shape[0], 10))}


@pytest.fixture
def fake_network(monkeypatch):
  """The network replaced by `_fake_network`; returns the expected features of images under
  a preprocessing, computed eagerly from `preprocess`."""
  monkeypatch.setattr(inception, '_inception_features', _fake_network)
  monkeypatch.setattr(fid.weights_lib, 'load_inception', lambda *_: {})
  return lambda images, method: np.asarray(
      _fake_features(inception.preprocess(images, method=method)))


def _digits(start, n=6, size=16):
  from sklearn.datasets import load_digits
  x = load_digits().images[start:start + n] / 16.0
  x = np.repeat(np.repeat(x, size // 8, axis=1), size // 8, axis=2)
  return np.repeat(np.round(x * 255)[..., None], 3, axis=-1).astype(np.uint8)


def test_features_follow_the_preprocessing(fake_network):
  images = _digits(0, n=5)
  acts = {}
  for method in inception.PREPROCESSING:
    # Batches of 3 and 2 (the short one padded to 3), as compute_activations feeds them.
    acts[method] = fid.compute_activations([images[:3], images[3:]], {}, preprocessing=method)
    np.testing.assert_allclose(acts[method]['pool_3'], fake_network(images, method),
                               rtol=1e-6, atol=1e-6)
  # clean_fid's images go to the device resized already (PIL on the host).
  direct = inception.sharded_features({}, images, preprocessing='clean_fid')
  np.testing.assert_allclose(direct['pool_3'], fake_network(images, 'clean_fid'),
                             rtol=1e-6, atol=1e-6)
  for a, b in (('pytorch_fid', 'tf'), ('pytorch_fid', 'clean_fid'), ('tf', 'clean_fid')):
    assert np.abs(acts[a]['pool_3'] - acts[b]['pool_3']).max() > 1e-3, (a, b)


def test_statistics_record_preprocessing_and_mismatches_are_refused(fake_network, tmp_path,
                                                                    capsys):
  a, b = _digits(0), _digits(100)
  np.savez(tmp_path / 'a.npz', samples=a)
  np.savez(tmp_path / 'b.npz', samples=b)
  path = lambda name: str(tmp_path / name)
  fid.main([path('a.npz'), '--save_stats', path('a_tf.npz'), '--preprocessing', 'tf'])
  assert "(tf preprocessing)" in capsys.readouterr().out
  saved = metrics.load_statistics(path('a_tf.npz'))
  assert saved['preprocessing'] == 'tf'
  with np.load(path('a_tf.npz'), allow_pickle=False) as f:  # a plain string array
    assert f['preprocessing'].dtype.kind == 'U' and str(f['preprocessing']) == 'tf'
  # Same preprocessing: the FID of the statistics computed directly.
  got = fid.main([path('a_tf.npz'), path('b.npz'), '--preprocessing', 'tf'])
  b_tf = fid.compute_statistics([b], {}, preprocessing='tf')
  assert b_tf['preprocessing'] == 'tf'
  assert got['fid'] == pytest.approx(metrics.frechet_distance(saved['mu'], saved['sigma'],
                                                              b_tf['mu'], b_tf['sigma']))
  # Different preprocessing (b at the default): one line naming both.
  with pytest.raises(ValueError, match=r"a_tf.npz was made with 'tf' .*b.npz with "
                     r"'pytorch_fid'") as e:
    fid.main([path('a_tf.npz'), path('b.npz')])
  assert '\n' not in str(e.value)
  # Files that record none are pytorch_fid: as before, with the default.
  np.savez(tmp_path / 'old.npz', pool_3=fid.compute_statistics([a], {})['pool_3'])
  assert metrics.load_statistics(path('old.npz'))['preprocessing'] == 'pytorch_fid'
  assert fid.main([path('old.npz'), path('b.npz')])['fid'] > 0
  with pytest.raises(ValueError, match="'pytorch_fid' Inception preprocessing and .* 'tf'"):
    fid.main([path('old.npz'), path('a_tf.npz')])
  with pytest.raises(SystemExit):  # argparse: not one of the choices
    fid.main([path('a.npz'), path('b.npz'), '--preprocessing', 'bicubic'])
  assert metrics.check_same_preprocessing(saved, b_tf) == 'tf'
  written = metrics.save_statistics(path('c.npz'), saved['pool_3'], preprocessing='clean_fid')
  assert written['preprocessing'] == 'clean_fid'
  assert metrics.load_statistics(path('c.npz'))['preprocessing'] == 'clean_fid'


def test_run_layer_checks_eval_inception_preprocessing(fake_network, tmp_path):
  from configs import load_config
  from scoresde_jax.run import sample_quality, stats

  config = load_config('configs/ve/digits.py')
  config.data.image_size = 8
  assert config.eval.inception_preprocessing == 'pytorch_fid'  # the default config's
  config.eval.inception_preprocessing = 'tf'
  path = str(tmp_path / 'digits_stats.npz')
  written = stats.compute_dataset_stats(config, path, inception_variables={}, max_images=6)
  assert str(written['preprocessing']) == 'tf'
  assert stats.load_stats(config, path)['preprocessing'] == 'tf'
  key = 'config.eval.inception_preprocessing'
  config.eval.inception_preprocessing = 'pytorch_fid'
  with pytest.raises(errors.ConfigError, match=rf"made with 'tf' .* {key}='pytorch_fid'"):
    stats.load_stats(config, path)
  # The reference's files record nothing: pytorch_fid.
  old = str(tmp_path / 'old_stats.npz')
  np.savez(old, pool_3=np.random.RandomState(0).standard_normal((6, 4)))
  stats.load_stats(config, old)
  config.eval.inception_preprocessing = 'clean_fid'
  with pytest.raises(errors.ConfigError, match=rf"made with 'pytorch_fid' .* {key}='clean_fid'"):
    stats.load_stats(config, old)
  config.eval.inception_preprocessing = 'bilinear'
  with pytest.raises(errors.ConfigError, match=rf"{key}='bilinear' is not an Inception "):
    stats.inception_preprocessing(config)
  # Sampling rounds of another preprocessing are not mixed into a resumed evaluation.
  with np.load(old) as f:
    sample_quality._check_round_preprocessing(old, f, 'pytorch_fid')
    with pytest.raises(errors.ConfigError, match=rf"made with 'pytorch_fid' .* {key}='tf'"):
      sample_quality._check_round_preprocessing(old, f, 'tf')


if __name__ == '__main__':
  make_fixture()
  print(f'wrote {FIXTURE}')
