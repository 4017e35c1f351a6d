"""Data pipelines: digits against scikit-learn's arrays, per-step determinism and resumption,
preprocessing options, tfds pipelines on `tfds.testing.mock_data`, TFRecords written here,
clear errors; and the config boundary (`run.data`): specs, defaults and error keys from a
config. (Sharding a host batch over devices: tests/test_parallel.py.)"""
import dataclasses
import hashlib
import os

import numpy as np
import pytest
import sklearn.datasets
import tensorflow as tf
import tensorflow_datasets as tfds

import configs
from scoresde_jax import datasets, errors
from scoresde_jax.run import data as run_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 42

# The library's arguments the tests use: digits in global batches of 32 (train, 3 fused steps)
# and 64 (eval); tfds and TFRecords in batches of 4 (train, 2 fused steps; eval).
DIGITS = datasets.DataSpec('DIGITS', image_size=16, num_channels=1)  # 2x pixel repetition
CIFAR10 = datasets.DataSpec('CIFAR10', image_size=32, num_channels=3, random_flip=True)


def _digits(split='train', *, spec=DIGITS, evaluation=False, **kwargs):
  defaults = dict(batch_size=64 if evaluation else 32, seed=SEED,
                  additional_dim=None if evaluation else 3)
  return datasets.get_dataset(spec, split, evaluation=evaluation, **{**defaults, **kwargs})


def _tf(spec=CIFAR10, split='train', *, evaluation=False, **kwargs):
  defaults = dict(batch_size=4, seed=SEED, additional_dim=None if evaluation else 2)
  return datasets.get_dataset(spec, split, evaluation=evaluation, **{**defaults, **kwargs})


def _digits_config(**data):
  config = configs.load_config(os.path.join(REPO, 'configs/ve/digits.py'))
  config.data.image_size = 16  # exercises the 2x pixel repetition
  config.training.batch_size = 32
  config.eval.batch_size = 64
  config.training.n_jitted_steps = 3
  for k, v in data.items():
    config.data[k] = v
  return config


def _cifar_config(**data):
  config = configs.load_config(os.path.join(REPO, 'configs/ve/cifar10.py'))
  config.training.batch_size = 4
  config.eval.batch_size = 4
  config.training.n_jitted_steps = 2
  for k, v in data.items():
    config.data[k] = v
  return config


def _key(img):
  return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


def _take(it, n):
  return [next(it) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Digits.


def test_digits_values_and_labels_equal_sklearn():
  sk = sklearn.datasets.load_digits()
  train_idx, eval_idx = datasets.digits_split_indices()
  # A partition of all 1,797 digits, 10% held out.
  assert len(np.intersect1d(train_idx, eval_idx)) == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, eval_idx])), np.arange(1797))
  assert len(eval_idx) == 180
  for split, idx in (('train', train_idx), ('eval', eval_idx)):
    x, y = datasets.load_digits(split, image_size=16, num_channels=1)
    assert x.shape == (len(idx), 16, 16, 1) and x.dtype == np.float32
    expected = np.kron(sk.images[idx] / 16., np.ones((2, 2)))  # 2x2 pixel repetition
    np.testing.assert_array_equal(x[..., 0], expected.astype(np.float32))
    np.testing.assert_array_equal(y, sk.target[idx])
  x3, _ = datasets.load_digits('eval', image_size=24, num_channels=3)
  np.testing.assert_array_equal(
      x3, np.repeat(np.kron(sk.images[eval_idx] / 16., np.ones((3, 3)))[..., None], 3, -1))


def test_digits_training_batches_are_train_images_with_labels():
  x_train, y_train = datasets.load_digits('train')
  x_eval, _ = datasets.load_digits('eval')
  train_keys = {_key(im): lab for im, lab in zip(x_train, y_train)}
  eval_keys = {_key(im) for im in x_eval}
  assert not eval_keys & set(train_keys)  # the two sets share no image

  b = next(_digits('train'))
  assert b['image'].shape == (3, 32, 16, 16, 1) and b['image'].dtype == np.float32
  assert b['label'].shape == (3, 32) and b['label'].dtype == np.int32
  for im, lab in zip(b['image'].reshape(-1, 16, 16, 1), b['label'].reshape(-1)):
    assert train_keys[_key(im)] == lab  # an unflipped training image, with its own label
  e = next(_digits('eval'))
  assert all(_key(im) in eval_keys for im in e['image'].reshape(-1, 16, 16, 1))


def test_digits_stream_is_a_chain_of_permutations():
  # Labels set to the example index expose which example each position takes.
  n, bsz = 60, 7
  images = np.zeros((n, 1, 1, 1), np.float32)
  idx = np.concatenate([
      datasets.digits_batch(images, np.arange(n), seed=3, step=s, batch_size=bsz)['label']
      for s in range(3 * n // bsz)])
  for e in range(3 * n // bsz * bsz // n):
    np.testing.assert_array_equal(np.sort(idx[e * n:(e + 1) * n]), np.arange(n))
  assert not np.array_equal(idx[:n], idx[n:2 * n])  # a new order every epoch


def test_digits_deterministic_per_step_and_resume():
  full = _take(_digits('train', additional_dim=None), 12)
  again = _take(_digits('train', additional_dim=None), 12)
  resumed = _take(_digits('train', additional_dim=None, start_step=7), 5)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(full[7:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # Fused steps are the same per-step batches, stacked; resuming at step 6 = element 2.
  fused = _take(_digits('train'), 4)
  fused_resumed = next(_digits('train', start_step=6))
  for j in range(4):
    for i in range(3):
      np.testing.assert_array_equal(fused[j]['image'][i], full[3 * j + i]['image'])
  np.testing.assert_array_equal(fused_resumed['image'], fused[2]['image'])
  other = next(_digits('train', additional_dim=None, seed=1))
  assert not np.array_equal(other['image'], full[0]['image'])


def test_digits_hosts_split_the_global_batch():
  one = next(_digits('train', start_step=4, process_count=1))
  parts = [next(_digits('train', start_step=4, process_index=i, process_count=2, num_devices=2))
           for i in range(2)]
  assert parts[0]['image'].shape == (3, 16, 16, 16, 1)
  np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts], axis=1), one['image'])


def test_digits_random_flip_honoured():
  x_train, _ = datasets.load_digits('train')
  keys = {_key(im) for im in x_train}
  mirrored = {_key(im[:, ::-1]) for im in x_train}
  assert not keys & mirrored
  spec = dataclasses.replace(DIGITS, random_flip=True)
  images = next(_digits('train', spec=spec))['image'].reshape(-1, 16, 16, 1)
  flipped = [_key(im) in mirrored for im in images]
  assert all(_key(im) in keys or f for im, f in zip(images, flipped))
  assert 0.25 < np.mean(flipped) < 0.75  # 96 fair coin flips
  # One-pass evaluation never flips.
  ev = next(_digits('eval', spec=spec, evaluation=True))
  x_eval, _ = datasets.load_digits('eval')
  np.testing.assert_array_equal(ev['image'], x_eval[:64])


def test_digits_uniform_dequantization_bounds_and_mean():
  dequantized = dataclasses.replace(DIGITS, uniform_dequantization=True)
  plain = next(_digits('train', start_step=5))['image']
  deq = next(_digits('train', spec=dequantized, start_step=5))['image']
  assert deq.min() >= 0. and deq.max() < 1.
  u = deq.astype(np.float64) * 256. - plain.astype(np.float64) * 255.  # the added noise
  assert u.min() >= -1e-4 and u.max() <= 1. + 1e-4
  assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005  # 24,576 draws of U[0, 1)
  # Background pixels (0) become u / 256 exactly: the noise fills [0, 1) of one 256th.
  zero = u[plain == 0]
  assert zero.size > 5000 and zero.max() > 0.999 and zero.min() < 0.001
  # Fresh noise at every step.
  plain6 = next(_digits('train', start_step=6))['image']
  deq6 = next(_digits('train', spec=dequantized, start_step=6))['image']
  u6 = deq6.astype(np.float64) * 256. - plain6.astype(np.float64) * 255.
  assert abs(np.corrcoef(u.ravel(), u6.ravel())[0, 1]) < 0.05
  # The get_dataset argument overrides the spec (the bits/dim evaluation asks for it), also
  # through the config boundary.
  deq2 = next(_digits('train', start_step=5, uniform_dequantization=True))['image']
  np.testing.assert_array_equal(deq2, deq)
  deq3 = next(run_data.get_dataset(_digits_config(), 'train', start_step=5,
                                   uniform_dequantization=True))['image']
  np.testing.assert_array_equal(deq3, deq)


def test_digits_one_pass_evaluation_keeps_every_example():
  x_eval, y_eval = datasets.load_digits('eval')
  batches = list(_digits('eval', evaluation=True))
  assert len(batches) == 3  # 180 examples in batches of 64
  assert all(b['image'].shape == (64, 16, 16, 1) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 180 and mask[:180].all()
  images = np.concatenate([b['image'] for b in batches])[mask]
  labels = np.concatenate([b['label'] for b in batches])[mask]
  np.testing.assert_array_equal(images, x_eval)
  np.testing.assert_array_equal(labels, y_eval)


def test_data_scaler_round_trip():
  x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
  for centered in (True, False):
    scaled = datasets.get_data_scaler(centered)(x)
    if centered:
      np.testing.assert_allclose(scaled, 2 * x - 1, atol=1e-7)
      assert scaled.min() >= -1 and scaled.max() <= 1
    else:
      np.testing.assert_array_equal(scaled, x)
    np.testing.assert_allclose(datasets.get_data_inverse_scaler(centered)(scaled), x, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Errors.


def test_unknown_dataset_and_split():
  config = _digits_config(dataset='IMAGENET')
  with pytest.raises(ValueError, match=r"'IMAGENET' is not supported.*DIGITS.*CIFAR10.*FFHQ"):
    run_data.get_dataset(config)
  with pytest.raises(ValueError, match="split='test'"):
    run_data.get_dataset(_digits_config(), 'test')
  with pytest.raises(ValueError, match='multiple of 8'):
    next(run_data.get_dataset(_digits_config(image_size=20)))


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match='training.batch_size=12 is not divisible by the 8 devices'):
    datasets.host_batch_size(12, 8, name='training.batch_size')
  assert datasets.host_batch_size(16, 8, num_processes=2) == 8
  config = _digits_config()
  config.training.batch_size = 12
  with pytest.raises(ValueError, match='training.batch_size=12 is not divisible by the 8 devices'):
    run_data.get_dataset(config, num_devices=8)
  config.eval.batch_size = 30
  with pytest.raises(ValueError, match='eval.batch_size=30 is not divisible by the 4 devices'):
    run_data.get_dataset(config, 'eval', evaluation=True, num_devices=4)


def test_spec_values_are_checked_and_named_by_their_config_key():
  # The library names the spec field or argument; the run layer the config key, as ConfigError.
  with pytest.raises(errors.ArgumentError, match="^dataset='IMAGENET' is not supported"):
    datasets.DataSpec('IMAGENET', image_size=32, num_channels=3)
  with pytest.raises(errors.ArgumentError, match='^category must name the LSUN category'):
    datasets.DataSpec('LSUN', image_size=64, num_channels=3)
  with pytest.raises(errors.ArgumentError, match='^num_channels=2: DIGITS is grayscale'):
    datasets.DataSpec('DIGITS', image_size=8, num_channels=2)
  with pytest.raises(errors.ConfigError, match="^data.dataset='IMAGENET' is not supported"):
    run_data.data_spec(_digits_config(dataset='IMAGENET'))
  with pytest.raises(errors.ConfigError, match='^data.image_size=20: DIGITS'):
    run_data.data_spec(_digits_config(image_size=20))
  config = _digits_config()
  config.training.n_jitted_steps = 0
  with pytest.raises(errors.ConfigError, match='^training.n_jitted_steps=0 must be >= 1'):
    run_data.get_dataset(config, 'train')
  config = _digits_config()
  config.training.batch_size = 12
  with pytest.raises(errors.ConfigError, match='^training.batch_size=12 is not divisible'):
    run_data.get_dataset(config, num_devices=8)
  # A value the caller passed keeps the library's name and type.
  with pytest.raises(errors.ArgumentError, match='^batch_size=12 is not divisible') as info:
    run_data.get_dataset(_digits_config(), num_devices=8, batch_size=12)
  assert not isinstance(info.value, errors.ConfigError)


def test_config_boundary_reads_config_data_and_batch_settings():
  config = _digits_config(centered=True)
  assert run_data.data_spec(config) == dataclasses.replace(DIGITS, centered=True)
  # '' in the configs means unset.
  assert run_data.data_spec(_cifar_config()) == datasets.DataSpec(
      'CIFAR10', image_size=32, num_channels=3, random_flip=True, data_dir=None,
      tfrecords_path='', category=None)
  # Batch sizes, fused steps and seed come from training.* / eval.* / seed.
  np.testing.assert_array_equal(next(run_data.get_dataset(config, 'train'))['image'],
                                next(_digits('train'))['image'])
  evaluation = next(run_data.get_dataset(config, 'eval', evaluation=True))
  assert evaluation['image'].shape == (64, 16, 16, 1) and 'mask' in evaluation
  x = np.linspace(0., 1., 5)
  np.testing.assert_allclose(run_data.get_data_scaler(config)(x), 2 * x - 1)
  np.testing.assert_allclose(run_data.get_data_inverse_scaler(config)(2 * x - 1), x)


def test_missing_tfds_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(datasets.DatasetNotFoundError) as info:
    _tf(dataclasses.replace(CIFAR10, data_dir=str(tmp_path)))
  msg = str(info.value)
  assert isinstance(info.value, ValueError)
  assert 'CIFAR10' in msg and 'tfds build cifar10' in msg and str(tmp_path) in msg


def test_missing_tfrecords_say_how_to_prepare(tmp_path):
  spec = datasets.DataSpec('CelebAHQ', image_size=256, num_channels=3, tfrecords_path='')
  with pytest.raises(datasets.DatasetNotFoundError, match='data.tfrecords_path is unset'):
    _tf(spec)
  spec = dataclasses.replace(spec, tfrecords_path=str(tmp_path / 'celebahq-r08.tfrecords'))
  with pytest.raises(datasets.DatasetNotFoundError, match='matches no file.*dataset_tool.py'):
    _tf(spec)


# ---------------------------------------------------------------------------------------------
# tfds (mocked) and TFRecords.


def _raw_mock(split, n):
  """The mocked split as tfds itself yields it: uint8 images and labels, in order."""
  ds = tfds.builder('cifar10').as_dataset(split=split)
  return [(ex['image'], ex['label']) for ex in tfds.as_numpy(ds.take(n))]


def test_tfds_cifar10_mock_shapes_values_and_options():
  with tfds.testing.mock_data(num_examples=10):
    raw = _raw_mock('test', 10)
    raw_imgs = np.stack([r[0] for r in raw]).astype(np.float32) / 255.
    # One pass in order: values are the tfds images / 255, labels kept, last batch masked.
    ev = list(_tf(CIFAR10, 'eval', evaluation=True))
    assert [b['image'].shape for b in ev] == [(4, 32, 32, 3)] * 3
    mask = np.concatenate([b['mask'] for b in ev])
    np.testing.assert_array_equal(mask, np.arange(12) < 10)
    np.testing.assert_allclose(np.concatenate([b['image'] for b in ev])[:10], raw_imgs,
                               atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b['label'] for b in ev])[:10],
                                  [r[1] for r in raw])

    # Training stream: [n_jitted_steps, B, H, W, C] in [0, 1]; flips only when asked.
    def match(images, raw_imgs):
      plain = [int(np.argmin(np.abs(raw_imgs - im).max(axis=(1, 2, 3)))) for im in images]
      ok = [np.abs(raw_imgs[j] - im).max() < 1e-6 for j, im in zip(plain, images)]
      mirror = [np.abs(raw_imgs[:, :, ::-1] - im).max(axis=(1, 2, 3)).min() < 1e-6
                for im in images]
      return np.array(ok), np.array(mirror)

    train_raw = np.stack([r[0] for r in _raw_mock('train', 10)]).astype(np.float32) / 255.
    for flip in (False, True):
      it = _tf(dataclasses.replace(CIFAR10, random_flip=flip), 'train')
      batches = _take(it, 5)
      assert batches[0]['image'].shape == (2, 4, 32, 32, 3)
      assert batches[0]['label'].shape == (2, 4)
      images = np.concatenate([b['image'].reshape(-1, 32, 32, 3) for b in batches])
      assert images.min() >= 0. and images.max() <= 1.
      plain, mirror = match(images, train_raw)
      assert np.all(plain | mirror)
      if flip:
        assert 0.2 < mirror.mean() < 0.8  # 40 fair coin flips
      else:
        assert not mirror.any()

    # Uniform dequantization: x = (raw + u) / 256 with u in [0, 1).
    deq = next(_tf(dataclasses.replace(CIFAR10, random_flip=False, uniform_dequantization=True),
                   'train'))
    for im in deq['image'].reshape(-1, 32, 32, 3):
      u = im * 256. - train_raw * 255.
      assert np.any(np.all((u > -1e-3) & (u < 1 + 1e-3), axis=(1, 2, 3)))
    assert deq['image'].min() >= 0. and deq['image'].max() < 1.

    # Named by the config key that set the value.
    with pytest.raises(ValueError, match='CIFAR10 images have 3 channels but data.num_channels=1'):
      run_data.get_dataset(_cifar_config(num_channels=1))


def test_tfds_mock_deterministic_and_resumable():
  with tfds.testing.mock_data(num_examples=10):
    spec = dataclasses.replace(CIFAR10, random_flip=True, uniform_dequantization=True)
    full = _take(_tf(spec, 'train', additional_dim=None), 7)
    # 10 examples, batches of 4: 2 steps per epoch, so step 3 is mid-epoch 1.
    resumed = _take(_tf(spec, 'train', additional_dim=None, start_step=3), 4)
    for a, b in zip(full[3:], resumed):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
    assert not np.array_equal(full[0]['image'], full[2]['image'])  # epochs differ
    fused = next(_tf(spec, 'train', start_step=3))  # steps 3 and 4
    np.testing.assert_array_equal(fused['image'], np.stack([full[3]['image'],
                                                            full[4]['image']]))


def _ramp(h, w):
  """uint8 [h, w, 3]: red = row index, green = column index, blue = 100."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.stack([rows, cols, np.full_like(rows, 100)], -1).astype(np.uint8)


def _mock_images(image):
  """An `as_dataset_fn` for tfds.testing.mock_data whose every example is `image`."""
  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, split, read_config, shuffle_files
    encoded = tf.io.encode_png(image)
    return tf.data.Dataset.from_tensors({'image': encoded if decoders else image}).repeat(2)
  return as_dataset


def _sample_points(n_out, n_in):
  """Input coordinate sampled by output pixel i of an n_in -> n_out resize (pixel centres)."""
  return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5


def test_tfds_celeba_mock_crop_and_resize():
  spec = datasets.DataSpec('CELEBA', image_size=64, num_channels=3)
  with tfds.testing.mock_data(as_dataset_fn=_mock_images(_ramp(218, 178))):
    b = next(_tf(spec, 'eval', evaluation=True, batch_size=2))
  assert b['image'].shape == (2, 64, 64, 3) and np.all(b['label'] == -1)
  # Central 140x140 crop (offsets 39, 19), shrunk 140 -> 64. A linear ramp stays linear away
  # from the borders (within 1e-3, a quarter gray level: the antialiasing kernel is sampled);
  # one pixel off would be 4e-3.
  centre, inner = _sample_points(64, 140), slice(2, 62)
  np.testing.assert_allclose(b['image'][0, inner, 10, 0], (39 + centre[inner]) / 255., atol=1e-3)
  np.testing.assert_allclose(b['image'][0, 10, inner, 1], (19 + centre[inner]) / 255., atol=1e-3)
  np.testing.assert_allclose(b['image'][..., 2], 100 / 255., atol=1e-5)


def test_tfds_lsun_mock_resize_and_crop():
  # 128: shorter side 100 -> 128 (so 200 -> 256 wide), then the central 128 columns (from 64).
  spec = datasets.DataSpec('LSUN', image_size=128, num_channels=3, category='church_outdoor')
  with tfds.testing.mock_data(as_dataset_fn=_mock_images(_ramp(100, 200))):
    b = next(_tf(spec, 'eval', evaluation=True, batch_size=2))
  assert b['image'].shape == (2, 128, 128, 3)
  inner = slice(2, 126)
  np.testing.assert_allclose(b['image'][0, inner, 5, 0],
                             _sample_points(128, 100)[inner] / 255., atol=1e-3)
  np.testing.assert_allclose(b['image'][0, 5, inner, 1],
                             _sample_points(256, 200)[64:192][inner] / 255., atol=1e-3)
  # Other sizes: central square crop (columns 40..139 of 180), bicubic 100 -> 32, then uint8
  # (rounded down as the reference does).
  spec = dataclasses.replace(spec, image_size=32)
  with tfds.testing.mock_data(as_dataset_fn=_mock_images(_ramp(100, 180))):
    b = next(_tf(spec, 'eval', evaluation=True, batch_size=2))
  assert b['image'].shape == (2, 32, 32, 3)
  levels = b['image'][0] * 255.
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # uint8 levels
  inner = slice(2, 30)
  expected_rows = _sample_points(32, 100)[inner]
  expected_cols = 40 + _sample_points(32, 100)[inner]
  for got, want in ((levels[inner, 5, 0], expected_rows), (levels[5, inner, 1], expected_cols)):
    assert np.all(got <= want + 0.01) and np.all(got >= want - 1.01)


def test_tfds_preprocessing_equals_reference():
  # Fixture: the reference's central_crop / resize_small / crop_resize (score_sde datasets.py,
  # run with TensorFlow 2.21) applied to random uint8 images.
  ref = np.load(os.path.join(REPO, 'tests/fixtures/datasets_ref_preprocess.npz'))
  cases = (('CELEBA', 64, 'celeba_in', 'celeba64_out'), ('LSUN', 64, 'lsun_in', 'lsun64_out'),
           ('LSUN', 128, 'lsun128_in', 'lsun128_out'))
  for dataset, size, key_in, key_out in cases:
    spec = datasets.DataSpec(dataset, image_size=size, num_channels=3, category='bedroom')
    with tfds.testing.mock_data(as_dataset_fn=_mock_images(ref[key_in])):
      b = next(_tf(spec, 'eval', evaluation=True, batch_size=2))
    np.testing.assert_allclose(b['image'][0], ref[key_out], atol=1e-6, err_msg=key_out)


def test_tfrecords_read_as_written(tmp_path):
  rng = np.random.default_rng(0)
  chw = rng.integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
  path = str(tmp_path / 'ffhq-r03.tfrecords')
  with tf.io.TFRecordWriter(path) as w:
    for img in chw:
      feature = {
          'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=img.shape)),
          'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[img.tobytes()]))}
      w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  spec = datasets.DataSpec('FFHQ', image_size=8, num_channels=3, random_flip=True,
                           tfrecords_path=str(tmp_path / '*.tfrecords'))
  ev = list(_tf(spec, 'eval', evaluation=True))
  images = np.concatenate([b['image'] for b in ev])[np.concatenate([b['mask'] for b in ev])]
  np.testing.assert_allclose(images, chw.transpose(0, 2, 3, 1) / 255., atol=1e-6)
  # Training: resuming counts the records (unknown cardinality) and matches the full stream.
  full = _take(_tf(spec, 'train', additional_dim=None), 4)
  resumed = next(_tf(spec, 'train', additional_dim=None, start_step=3))
  np.testing.assert_array_equal(full[3]['image'], resumed['image'])
