"""FID Inception: parity with pytorch-fid's network, safe .pth reading, errors.

Fixtures (made outside the repo with torch and pytorch-fid's `inception.py`):
  inception_parity.npz: state-dict key names/shapes, a seed, input images and the
    pool_3 / logits that pytorch-fid's `InceptionV3` (+ its `fc`) gives for them with
    weights drawn by `_random_state_dict` below; plus F.interpolate(bilinear,
    align_corners=False) up- and down-sizing results.
  inception_torchsave_{zip,legacy}.pth: a small nested dict of tensors saved by
    `torch.save` in both formats; inception_torchsave_expected.npz: its arrays.
"""
import os
import pickle
import shutil
import zipfile

import jax
import numpy as np
import pytest

from scoresde_jax import parallel, torch_pickle
from scoresde_jax.evaluation import fid
from scoresde_jax.evaluation import inception
from scoresde_jax.evaluation import metrics
from scoresde_jax.evaluation import weights

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def _random_state_dict(shapes, seed):
  """The fixture's weight rule: keys in sorted order from one RandomState.

  Conv weights He-scaled, fc 1/sqrt(fan_in), BN gamma ~ 1 + 0.1 N, running_var in
  [0.5, 1.5], biases / running means 0.1 N: activations stay O(1) to the logits.
  """
  rng = np.random.RandomState(seed)
  out = {}
  for key in sorted(shapes):
    shape = tuple(shapes[key])
    if key.endswith('num_batches_tracked'):
      out[key] = np.zeros(shape, np.int64)
      continue
    if key.endswith('running_var'):
      v = rng.uniform(0.5, 1.5, shape)
    elif key.endswith('bn.weight'):
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif key.endswith('weight'):
      fan_in = int(np.prod(shape[1:]))
      v = rng.standard_normal(shape) * np.sqrt((2.0 if len(shape) == 4 else 1.0) / fan_in)
    else:
      v = 0.1 * rng.standard_normal(shape)
    out[key] = v.astype(np.float32)
  return out


@pytest.fixture(scope='module')
def parity():
  with np.load(os.path.join(FIXTURES, 'inception_parity.npz')) as f:
    data = {k: f[k] for k in f.files}
  shapes, pos = {}, 0
  for key, ndim in zip(data['sd_keys'], data['sd_ndim']):
    shapes[str(key)] = tuple(int(d) for d in data['sd_dims'][pos:pos + ndim])
    pos += ndim
  state_dict = _random_state_dict(shapes, int(data['seed']))
  data['state_dict'] = state_dict
  data['variables'] = weights.convert_torch_state_dict(state_dict)
  return data


def _rel_err(a, b):
  return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def test_matches_pytorch_fid_network(parity):
  v = parity['variables']
  outs = [inception.compute_features(v, parity[k])
          for k in ('images_small', 'images_full', 'images_big')]
  pool_3 = np.concatenate([np.asarray(o['pool_3']) for o in outs])
  logits = np.concatenate([np.asarray(o['logits']) for o in outs])
  assert pool_3.shape == (5, 2048) and logits.shape == (5, 1008)
  assert pool_3.dtype == np.float32
  # Images differ by ~5% of the feature norm, so 1e-4 is a sharp test.
  assert _rel_err(pool_3, parity['pool_3']) < 1e-4
  assert _rel_err(logits, parity['logits']) < 1e-4
  np.testing.assert_allclose(pool_3, parity['pool_3'], rtol=1e-4, atol=1e-4)


def test_converted_tree_matches_torch_layout(parity):
  v = parity['variables']
  sd = parity['state_dict']
  np.testing.assert_array_equal(v['params']['Mixed_6b']['branch7x7_2']['conv']['kernel'],
                                sd['Mixed_6b.branch7x7_2.conv.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v['params']['fc']['kernel'], sd['fc.weight'].T)
  np.testing.assert_array_equal(v['batch_stats']['Mixed_7c']['branch_pool']['bn']['var'],
                                sd['Mixed_7c.branch_pool.bn.running_var'])
  n_params = sum(x.size for k, x in sd.items() if not k.endswith('num_batches_tracked'))
  assert sum(x.size for x in jax.tree.leaves(v)) == n_params


@pytest.mark.parametrize('direction', ['up', 'down'])
def test_resize_matches_torch_bilinear(direction, parity):
  x = parity[f'resize_{direction}_in']
  expected = parity[f'resize_{direction}_out']
  got = inception.preprocess(x * 255.0, size=expected.shape[1])
  np.testing.assert_allclose(np.asarray(got), 2.0 * expected - 1.0, atol=1e-5)


def test_converter_reports_missing_and_unexpected(parity):
  sd = dict(parity['state_dict'])
  del sd['Mixed_5b.branch1x1.conv.weight']
  sd['Mixed_5b.extra.conv.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r'missing.*Mixed_5b/branch1x1/conv/kernel'):
    weights.convert_torch_state_dict(sd)
  sd = dict(parity['state_dict'])
  sd['fc.weight'] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(ValueError, match=r'wrong shapes.*fc/kernel'):
    weights.convert_torch_state_dict(sd)


def test_sharded_features_and_compute_activations(parity):
  v = parity['variables']
  images = parity['images_small']
  sharded = inception.sharded_features(v, images, mesh=parallel.make_mesh())
  np.testing.assert_allclose(sharded['pool_3'], parity['pool_3'][:3], rtol=1e-4, atol=1e-4)
  # Batches of 3, then 2 (padded to 3 internally: no recompilation), truncated by
  # max_samples, then one that is never read.
  batches = [images, images[1:], images]
  acts = fid.compute_activations(iter(batches), v, max_samples=4)
  order = [0, 1, 2, 1]
  assert acts['pool_3'].shape == (4, 2048) and acts['logits'].shape == (4, 1008)
  np.testing.assert_allclose(acts['pool_3'], parity['pool_3'][order], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(acts['logits'], parity['logits'][order], rtol=1e-4, atol=1e-4)


def test_statistics_from_png_folder(parity, tmp_path):
  from PIL import Image
  images = parity['images_small'].round().astype(np.uint8)
  for i, im in enumerate(images):
    Image.fromarray(im).save(tmp_path / f'{i:03d}.png')
  Image.fromarray(images[0]).convert('L').save(tmp_path / 'zz_gray.png')  # -> RGB
  batches = list(fid.image_folder_batches(tmp_path, batch_size=3))
  assert [b.shape for b in batches] == [(3, 32, 32, 3), (1, 32, 32, 3)]
  np.testing.assert_array_equal(batches[0], images)
  gray = batches[1][0]
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
  out = tmp_path / 'stats.npz'
  # float32 batches of 3 reuse the program compiled by the test above.
  batches = [b.astype(np.float32) for b in batches]
  stats = fid.compute_statistics(batches, parity['variables'], path=out)
  loaded = metrics.load_statistics(out)
  direct = inception.sharded_features(parity['variables'], batches[0])
  np.testing.assert_array_equal(loaded['pool_3'][:3], direct['pool_3'])
  np.testing.assert_allclose(loaded['mu'], stats['pool_3'].mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(loaded['sigma'], np.cov(stats['pool_3'].astype(np.float64),
                                                     rowvar=False), rtol=1e-6, atol=1e-6)
  assert loaded['logits'].shape == (4, 1008)


def test_fid_command_on_folders_sample_files_and_statistics(parity, tmp_path, monkeypatch):
  """Image folders, sample .npz files and statistics files give the same statistics, so one
  FID in any mix (one batch of 3 per side: the program compiled above)."""
  from PIL import Image
  images = parity['images_small'].round().astype(np.uint8)  # 3 images, 32x32
  sides = {'a': images, 'b': np.concatenate([images[:1, :, ::-1], 255 - images[1:]])}
  for name, pixels in sides.items():
    os.makedirs(tmp_path / name)
    for i, im in enumerate(pixels):
      Image.fromarray(im).save(tmp_path / name / f'{i:03d}.png')
    np.savez(tmp_path / f'{name}_samples.npz', samples=pixels)
  monkeypatch.setattr(fid.weights_lib, 'load_inception', lambda *_: parity['variables'])
  path = lambda name, kind='': str(tmp_path / (name + kind))
  fid.main([path('a'), '--save_stats', path('a', '_stats.npz'), '--batch_size', '3'])
  variables = lambda: parity['variables']
  saved = fid.load_side(path('a', '_stats.npz'), variables)
  for other in (fid.load_side(path('a'), variables),
                fid.load_side(path('a', '_samples.npz'), variables)):
    np.testing.assert_array_equal(other['mu'], saved['mu'])
    np.testing.assert_array_equal(other['sigma'], saved['sigma'])
  b = fid.load_side(path('b'), variables)
  got = fid.main([path('a', '_stats.npz'), path('b', '_samples.npz'), '--batch_size', '3'])
  assert got['fid'] == metrics.frechet_distance(saved['mu'], saved['sigma'], b['mu'], b['sigma'])
  assert got['fid'] > 1.0
  # Sample files under another key, or of the wrong kind: one line naming what is expected.
  np.savez(tmp_path / 'wrong_key.npz', pictures=sides['a'])
  with pytest.raises(ValueError, match=r"neither images \(one of \['samples'.*keys: \['pictures'\]"):
    fid.main([str(tmp_path / 'wrong_key.npz'), path('a', '_stats.npz')])
  np.savez(tmp_path / 'floats.npz', samples=sides['a'] / 255.0)
  with pytest.raises(ValueError, match='expected uint8 images'):
    fid.main([str(tmp_path / 'floats.npz'), path('a', '_stats.npz')])
  np.savez(tmp_path / 'flat.npz', samples=sides['a'].reshape(3, -1))
  with pytest.raises(ValueError, match=r'shape \(3, 3072\)'):
    fid.main([str(tmp_path / 'flat.npz'), path('a', '_stats.npz')])


def test_folder_with_mixed_sizes_is_rejected(tmp_path):
  from PIL import Image
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'a.png')
  Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / 'b.png')
  with pytest.raises(ValueError, match='different sizes'):
    list(fid.image_folder_batches(tmp_path))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no images'):
    fid.list_images(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='No image folder'):
    fid.list_images(tmp_path / 'missing')


@pytest.mark.parametrize('images,message', [
    (np.zeros((2, 3, 32, 32), np.uint8), 'NCHW'),
    (np.zeros((32, 32, 3), np.uint8), 'batch axis'),
    (np.zeros((2, 32, 32, 1), np.uint8), 'Grayscale'),
    (np.zeros((2, 32, 32, 3), np.int32), 'dtype int32'),
    (np.full((2, 32, 32, 3), -0.5, np.float32), r'\[-1, 1\] images'),
    (np.full((2, 32, 32, 3), 300.0, np.float32), r'range \[300, 300\]'),
    (np.full((2, 32, 32, 3), np.nan, np.float32), 'NaN'),
    ([[1, 2, 3]], 'shape'),
])
def test_bad_images_give_clear_errors(images, message):
  with pytest.raises(ValueError, match=message):
    inception.check_images(images)


def test_image_range_checks_on_device_arrays_and_warns_for_unit_range():
  with pytest.raises(ValueError, match=r'\[-1, 1\] images'):
    inception.check_images(jax.numpy.full((1, 8, 8, 3), -1.0))
  with pytest.warns(UserWarning, match=r'Multiply \[0, 1\] images by 255'):
    inception.check_images(np.full((1, 8, 8, 3), 0.5, np.float32))
  inception.check_images(np.full((1, 8, 8, 3), 255, np.uint8))  # Fine: no error.


def test_bad_images_rejected_before_running_network():
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    inception.compute_features({}, np.zeros((2, 3, 299, 299), np.float32))


# ---------------------------------------------------------------------------
# Safe .pth reading.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['inception_torchsave_zip.pth', 'inception_torchsave_legacy.pth'])
def test_load_torch_state_dict_matches_torch(name):
  got = torch_pickle.load_state_dict(os.path.join(FIXTURES, name))
  with np.load(os.path.join(FIXTURES, 'inception_torchsave_expected.npz')) as f:
    expected = {k: f[k] for k in f.files}
  assert list(got) == list(expected)  # Nested keys joined with '.', file order kept.
  for key, value in expected.items():
    assert got[key].shape == value.shape, key
    np.testing.assert_array_equal(got[key].astype(value.dtype), value, err_msg=key)
  assert got['model.conv.weight'].dtype == np.float32
  assert got['model.half'].dtype == np.float16
  assert got['model.long'].dtype == np.int64
  assert got['model.bn.num_batches_tracked'].shape == ()
  assert got['model.bf16'].dtype.name == 'bfloat16'
  # Strided / offset views of one storage come back as the logical tensors.
  base = np.arange(24, dtype=np.float32).reshape(4, 6) / np.float32(7)
  np.testing.assert_array_equal(got['model.transposed'], base.T)
  np.testing.assert_array_equal(got['model.sliced'], base[1:3, 2:5])


# Protocol-0 pickle calling os.system on load.
def _evil_pickle(marker):
  return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def test_refuses_malicious_zip_pickle(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('evil/data.pkl', _evil_pickle(marker))
    zf.writestr('evil/version', '3\n')
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r'global os\.system'):
    torch_pickle.load_state_dict(path)
  assert not marker.exists()


def test_refuses_malicious_legacy_pickle(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  header = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2)
  header += pickle.dumps({'little_endian': True}, protocol=2)
  path.write_bytes(header + _evil_pickle(marker))
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r'global os\.system'):
    torch_pickle.load_state_dict(path)
  # The payload in the very first pickle is refused too.
  path.write_bytes(f"cbuiltins\neval\n(S'open(\"{marker}\", \"w\")'\ntR.".encode())
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r'global builtins\.eval'):
    torch_pickle.load_state_dict(path)
  assert not marker.exists()


def test_load_torch_state_dict_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.pth'):
    torch_pickle.load_state_dict(tmp_path / 'nothing.pth')
  bad = tmp_path / 'bad.pth'
  bad.write_bytes(pickle.dumps(12345, protocol=2))
  with pytest.raises(ValueError, match='not a torch checkpoint'):
    torch_pickle.load_state_dict(bad)


# ---------------------------------------------------------------------------
# Locating, converting and caching the real weights (without the real file).
# ---------------------------------------------------------------------------


def test_missing_weights_error_says_where_to_get_and_put(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.delenv(weights.INCEPTION_WEIGHTS_ENV, raising=False)
  with pytest.raises(FileNotFoundError) as info:
    weights.load_inception(cache_dir=tmp_path / 'cache')
  msg = str(info.value)
  assert weights.INCEPTION_WEIGHTS_URL in msg
  assert 'SCORESDE_INCEPTION_WEIGHTS' in msg
  assert os.path.join('.cache', 'scoresde_jax', 'pt_inception-2015-12-05-6726825d.pth') in msg
  assert str(tmp_path) in msg  # The expanded default location that was tried.
  # Env var and explicit path are what gets looked at (and named) when given.
  monkeypatch.setenv(weights.INCEPTION_WEIGHTS_ENV, str(tmp_path / 'from_env.pth'))
  with pytest.raises(FileNotFoundError, match='from_env.pth'):
    weights.load_inception(cache_dir=tmp_path / 'cache')
  with pytest.raises(FileNotFoundError, match='explicit.pth'):
    weights.load_inception(tmp_path / 'explicit.pth', cache_dir=tmp_path / 'cache')


def test_load_inception_converts_and_caches(parity, tmp_path, monkeypatch):
  pth = tmp_path / 'renamed_inception.pth'
  pth.write_bytes(b'placeholder')  # Contents come from the patched reader below.
  calls = []

  def fake_reader(path):
    calls.append(path)
    return parity['state_dict']

  monkeypatch.setattr(torch_pickle, 'load_state_dict', fake_reader)
  cache = tmp_path / 'cache'
  v1 = weights.load_inception(pth, cache_dir=cache)
  assert len(calls) == 1 and len(os.listdir(cache)) == 1
  v2 = weights.load_inception(pth, cache_dir=cache)  # From the .npz cache.
  assert len(calls) == 1
  for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v2)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(v1) == jax.tree.structure(v2)
  # A different file in the same cache dir gets its own conversion, not the cache.
  other = tmp_path / 'other.pth'
  other.write_bytes(b'other placeholder')
  weights.load_inception(other, cache_dir=cache)
  assert len(calls) == 2 and len(os.listdir(cache)) == 2
  # With no .pth anywhere, a cached conversion of the official file is used.
  first = [f for f in os.listdir(cache) if f.startswith('inception-')][0]
  shutil.copy(cache / first, cache / f'inception-{weights.INCEPTION_WEIGHTS_SHA256_PREFIX}-flax-v1.npz')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.delenv(weights.INCEPTION_WEIGHTS_ENV, raising=False)
  v3 = weights.load_inception(cache_dir=cache)
  assert len(calls) == 2
  np.testing.assert_array_equal(v3['params']['fc']['bias'], v1['params']['fc']['bias'])
  # A file with the official name but the wrong hash is refused.
  official = tmp_path / weights.INCEPTION_WEIGHTS_FILENAME
  official.write_bytes(b'truncated download')
  with pytest.raises(ValueError, match='sha256'):
    weights.load_inception(official, cache_dir=tmp_path / 'cache2')
