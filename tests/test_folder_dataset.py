"""FOLDER: your own PNG / JPEG images. Trees written here with PIL (two class sub-folders,
several sizes and aspect ratios, both formats); values against PIL's own crop and resize,
labels, the hashed split, per-step determinism and resumption, host shards, flips and
dequantization (the digits' `_augment`), one-pass evaluation as `--mode fid_stats` reads it,
every bad input's one-line error, and no TensorFlow on this path."""
import dataclasses
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

import configs
from scoresde_jax import datasets, errors
from scoresde_jax.run import data as run_data
from scoresde_jax.run import images as run_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 7
SIZE = 16
# (width, height) of the images, cycled: landscape, portrait, square, exactly SIZE, odd sides.
SHAPES = ((40, 24), (20, 33), (30, 30), (16, 16), (45, 17), (17, 29))


def _random_image(rng, width, height, mode='RGB'):
  channels = {'RGB': 3, 'RGBA': 4, 'L': 1}[mode]
  pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
  # A gradient as well as noise, so flips and crops are visible.
  pixels = (pixels // 2 + np.linspace(0, 127, width, dtype=np.uint8)[None, :, None])
  return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def _write(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)


def _tree(root, per_class=(14, 12), classes=('dogs', 'cats'), seed=0):
  """Class sub-folders of PNGs and JPEGs (one nested deeper) of the sizes SHAPES; returns root."""
  rng = np.random.default_rng(seed)
  k = 0
  for name, count in zip(classes, per_class):
    for i in range(count):
      ext = ('png', 'jpg', 'JPEG')[i % 3]
      sub = 'deeper/' if i == 5 else ''
      _write(os.path.join(root, name, f'{sub}img_{i:02d}.{ext}'),
             _random_image(rng, *SHAPES[k % len(SHAPES)]))
      k += 1
  return str(root)


def _spec(path, **kwargs):
  return datasets.DataSpec(**{'dataset': 'FOLDER', 'image_size': SIZE, 'num_channels': 3,
                              'path': str(path), **kwargs})


def _folder(spec, split='train', *, evaluation=False, **kwargs):
  defaults = dict(batch_size=8, seed=SEED, num_devices=1, process_index=0, process_count=1)
  return datasets.get_dataset(spec, split, evaluation=evaluation, **{**defaults, **kwargs})


def _pil_expected(file, size=SIZE):
  """The documented preprocessing, written out with PIL: central square, bicubic, / 255."""
  with Image.open(file) as im:
    im = im.convert('RGB')
  w, h = im.size
  s = min(w, h)
  box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
  im = im.crop(box).resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(im, np.float32) / 255.


def _one_pass(spec, split='train', **kwargs):
  batches = list(_folder(spec, split, evaluation=True, **kwargs))
  mask = np.concatenate([b['mask'] for b in batches])
  return (np.concatenate([b['image'] for b in batches])[mask],
          np.concatenate([b['label'] for b in batches])[mask], batches)


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return _tree(tmp_path_factory.mktemp('images'))


# ---------------------------------------------------------------------------------------------
# Values, labels, split.


def test_crop_and_resize_equal_pil_and_labels_follow_sub_folders(tree):
  index = datasets.scan_folder(tree)
  assert index.classes == ('cats', 'dogs')  # sorted names, index = label
  assert len(index.files) == 26 and list(index.files) == sorted(index.files)
  assert 'dogs/deeper/img_05.JPEG' in index.files  # deeper folders: their first-level class
  for f, label in zip(index.files, index.labels):
    assert label == index.classes.index(f.split('/')[0])
  for split in ('train', 'eval'):
    members = index.split(split)
    x, y, batches = _one_pass(_spec(tree), split)
    assert all(b['image'].shape == (8, SIZE, SIZE, 3) and b['image'].dtype == np.float32
               and b['label'].dtype == np.int32 for b in batches)
    assert len(x) == len(members)
    for img, label, i in zip(x, y, members):
      np.testing.assert_array_equal(img, _pil_expected(os.path.join(tree, index.files[i])))
      assert label == index.labels[i]
  # Already at image_size: the pixels themselves, no resampling.
  file = os.path.join(tree, 'dogs', 'img_03.png')
  assert Image.open(file).size == (SIZE, SIZE)
  np.testing.assert_array_equal(datasets.load_folder_image(file, SIZE, 3),
                                np.asarray(Image.open(file).convert('RGB')))


def test_unlabelled_root_gray_images_and_skipped_files(tmp_path):
  rng = np.random.default_rng(1)
  for i, shape in enumerate(SHAPES):
    _write(str(tmp_path / f'{i}.png'), _random_image(rng, *shape, mode='L'))
  (tmp_path / 'notes.txt').write_text('not an image')
  _write(str(tmp_path / '.hidden.png'), _random_image(rng, 20, 20, mode='RGB'))  # skipped
  _write(str(tmp_path / '.cache' / 'x.png'), _random_image(rng, 20, 20, mode='RGB'))  # skipped
  index = datasets.scan_folder(str(tmp_path))
  assert index.files == tuple(f'{i}.png' for i in range(len(SHAPES))) and index.classes == ()
  np.testing.assert_array_equal(index.labels, -1)  # unlabelled, as CelebA or FFHQ
  gray3 = datasets.load_folder_image(str(tmp_path / '0.png'), SIZE, 3)
  gray1 = datasets.load_folder_image(str(tmp_path / '0.png'), SIZE, 1)
  assert gray1.shape == (SIZE, SIZE, 1) and gray3.shape == (SIZE, SIZE, 3)
  np.testing.assert_array_equal(gray3, np.repeat(gray1, 3, -1))  # gray repeated to 3 channels
  np.testing.assert_array_equal(gray1[..., 0] / np.float32(255.), _pil_expected(
      str(tmp_path / '0.png'))[..., 0])
  batch = next(_folder(_spec(tmp_path, num_channels=1)))
  assert batch['image'].shape == (8, SIZE, SIZE, 1)
  np.testing.assert_array_equal(batch['label'], -1)


def test_split_by_hash_of_relative_path_is_stable_and_disjoint(tree, tmp_path):
  index = datasets.scan_folder(tree)
  train, evals = index.split('train'), index.split('eval')
  assert not set(train) & set(evals)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, evals])), np.arange(26))
  for i, f in enumerate(index.files):  # the documented rule, written out
    h = int.from_bytes(hashlib.sha1(f.encode('utf-8')).digest()[:8], 'big')
    assert (i in evals) == (h % 100 < 10) == datasets.folder_is_eval(f)
  # Adding images moves no other image between the splits.
  more = _tree(tmp_path / 'more', per_class=(30, 12))
  bigger = datasets.scan_folder(more)
  assert set(index.files) < set(bigger.files)
  eval_files = {bigger.files[i] for i in bigger.split('eval')}
  assert {index.files[i] for i in evals} == eval_files & set(index.files)
  # The training stream reads train images only.
  train_keys = {_pil_expected(os.path.join(tree, index.files[i])).tobytes() for i in train}
  for b in _take(_folder(_spec(tree)), 4):
    assert all(im.tobytes() in train_keys for im in b['image'])


# ---------------------------------------------------------------------------------------------
# Determinism, resumption, hosts, augmentation.


def test_deterministic_per_step_and_resumable(tree):
  spec = _spec(tree, random_flip=True, uniform_dequantization=True)
  full = _take(_folder(spec), 8)  # 8 steps of 8: three epochs of the ~23 train images
  again = _take(_folder(spec), 8)
  resumed = _take(_folder(spec, start_step=5), 3)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  for s in range(1, 8):
    assert not np.array_equal(full[s]['image'], full[0]['image'])
  fused = _take(_folder(spec, additional_dim=2), 2)
  assert fused[0]['image'].shape == (2, 8, SIZE, SIZE, 3) and fused[0]['label'].shape == (2, 8)
  np.testing.assert_array_equal(fused[1]['image'][1], full[3]['image'])
  other = next(_folder(spec, seed=SEED + 1))
  assert not np.array_equal(other['image'], full[0]['image'])
  # The same chain of permutations as the digits: each epoch reads every train image once.
  n = len(datasets.scan_folder(tree).split('train'))
  labels = np.concatenate([b['label'] for b in _take(_folder(_spec(tree), batch_size=n), 2)])
  np.testing.assert_array_equal(np.bincount(labels[:n]), np.bincount(labels[n:]))


def test_hosts_read_disjoint_shards_that_make_the_global_batch(tree, monkeypatch):
  spec = _spec(tree, random_flip=True, uniform_dequantization=True)
  one = next(_folder(spec, start_step=3, additional_dim=2))
  index = datasets.scan_folder(tree)
  # What each host asks to decode (every decode goes through `start`, in the calling thread).
  requested = []
  real_start = datasets._FolderReader.start
  monkeypatch.setattr(datasets._FolderReader, 'start',
                      lambda self, idx: requested.extend(idx.tolist()) or real_start(self, idx))
  parts, files = [], []
  for host in range(2):
    requested.clear()
    parts.append(next(_folder(spec, start_step=3, additional_dim=2, num_devices=2,
                              process_index=host, process_count=2)))
    files.append({index.files[i] for i in requested})
  assert parts[0]['image'].shape == (2, 4, SIZE, SIZE, 3)
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=1), one[key])
  # Each host decodes exactly the images of its rows: of steps 3 and 4 (start_step counts single
  # steps), and of step 5, read ahead. Within an epoch the rows of the two hosts are different
  # images.
  members = index.split('train')

  def rows(step, host):
    idx = datasets._chain_indices(len(members), seed=SEED, stream=0, step=step, batch_size=8)
    return {index.files[members[i]] for i in idx[4 * host:4 * host + 4]}

  for host in range(2):
    assert files[host] == rows(3, host) | rows(4, host) | rows(5, host)
  for step in (3, 4, 5):
    if step * 8 // len(members) == (step * 8 + 7) // len(members):  # one epoch
      assert not rows(step, 0) & rows(step, 1)


def test_random_flip_and_dequantization_are_the_digits_augmentation(tree):
  plain = _take(_folder(_spec(tree)), 6)
  flipped = _take(_folder(_spec(tree, random_flip=True)), 6)
  mirrored = []
  for p, f in zip(plain, flipped):
    np.testing.assert_array_equal(p['label'], f['label'])  # the same images
    for a, b in zip(p['image'], f['image']):
      same, mirror = np.array_equal(a, b), np.array_equal(a[:, ::-1], b)
      assert same or mirror
      mirrored.append(mirror and not same)
  assert 0.25 < np.mean(mirrored) < 0.75  # 48 fair coin flips
  # Exactly `_augment` of each example with the generator of (seed, stream, 1, step, position).
  step, spec = 4, _spec(tree, random_flip=True, uniform_dequantization=True)
  aug = _take(_folder(spec), 5)[step]['image']
  for pos in range(8):
    rng = np.random.default_rng([SEED, 0, 1, step, pos])
    want = datasets._augment(plain[step]['image'][pos:pos + 1], rng, True, True)[0]
    np.testing.assert_array_equal(aug[pos], want)
  u = (np.stack([b['image'] for b in _take(_folder(_spec(tree, uniform_dequantization=True)),
                                                  6)]).astype(np.float64) * 256.
       - np.stack([b['image'] for b in plain]).astype(np.float64) * 255.)
  assert u.min() >= -1e-4 and u.max() <= 1. + 1e-4
  assert abs(u.mean() - 0.5) < 0.01  # 36,864 draws of U[0, 1)
  # One-pass evaluation never flips; the get_dataset argument overrides the spec's noise.
  x, _, _ = _one_pass(_spec(tree, random_flip=True), 'eval')
  np.testing.assert_array_equal(x, _one_pass(_spec(tree), 'eval')[0])
  xd, _, _ = _one_pass(_spec(tree, random_flip=True), 'eval', uniform_dequantization=True)
  assert not np.array_equal(xd, x) and np.all((xd * 256 - x * 255 >= -1e-4)
                                               & (xd * 256 - x * 255 <= 1 + 1e-4))


def test_decoded_images_are_cached(tree, monkeypatch):
  calls = []
  real_load = datasets.load_folder_image
  monkeypatch.setattr(datasets, 'load_folder_image',
                      lambda file, *a: calls.append(file) or real_load(file, *a))
  _take(_folder(_spec(tree)), 10)  # 80 examples: more than three epochs
  assert len(calls) == len(set(calls)) == len(datasets.scan_folder(tree).split('train'))


# ---------------------------------------------------------------------------------------------
# Evaluation as --mode fid_stats reads it, the config boundary, no TensorFlow.


def _config(path, **data):
  config = configs.load_config(os.path.join(REPO, 'configs/ve/folder_example.py'))
  config.data.path = str(path)
  config.data.image_size = SIZE
  config.training.batch_size = 8
  config.eval.batch_size = 8
  for k, v in data.items():
    config.data[k] = v
  return config


def test_fid_stats_pass_ends_and_reads_every_train_image_once(tree):
  config = _config(tree)
  # What stats.compute_dataset_stats iterates (one pass, no dequantization), to 8-bit pixels.
  stream = run_data.get_dataset(config, 'train', evaluation=True, uniform_dequantization=False)
  pixels = [run_images.to_uint8(b['image'][b['mask']]) for b in stream]  # must end
  pixels = np.concatenate(pixels)
  index = datasets.scan_folder(tree)
  members = index.split('train')
  assert len(pixels) == len(members)
  for p, i in zip(pixels, members):
    with Image.open(os.path.join(tree, index.files[i])) as im:
      w, h = im.size
      s = min(w, h)
      box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
      want = np.asarray(im.convert('RGB').crop(box).resize((SIZE, SIZE),
                                                            Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(p, want)  # the 8-bit pixels PIL makes, exactly


def test_fid_stats_of_a_folder(tree, tmp_path, monkeypatch):
  # --mode fid_stats itself, with a stand-in for the Inception network (per-channel means of its
  # input) so that no weights are needed.
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from scoresde_jax.evaluation import inception  # pylint: disable=import-outside-toplevel
  from scoresde_jax.run import stats  # pylint: disable=import-outside-toplevel

  def fake_network(variables, images, preprocessing):
    x = inception.preprocess(images, method=preprocessing)
    return {'pool_3': x.mean((1, 2)), 'logits': jnp.zeros((images.shape[0], 10))}

  monkeypatch.setattr(inception, '_inception_features', fake_network)
  config = _config(tree)
  path = str(tmp_path / stats.stats_filename(config))
  written = stats.compute_dataset_stats(config, path, inception_variables={})
  assert int(written['num_images']) == len(datasets.scan_folder(tree).split('train'))
  assert str(written['dataset']) == 'FOLDER' and int(written['image_size']) == SIZE
  assert stats.load_stats(config, path)['mu'].shape == (3,)


def test_config_boundary_and_example_config(tree):
  example = configs.load_config(os.path.join(REPO, 'configs/ve/folder_example.py'))
  assert example.data.dataset == 'FOLDER' and example.data.path == ''
  assert example.data.image_size == 32 and example.data.upscale is False
  assert example.model.name == 'ncsnpp' and example.training.sde == 'vesde'
  config = _config(tree, upscale=True)
  assert run_data.data_spec(config) == _spec(tree, random_flip=True, upscale=True)
  config.training.n_jitted_steps = 2
  batch = next(run_data.get_dataset(config, 'train', num_devices=1))
  assert batch['image'].shape == (2, 8, SIZE, SIZE, 3)
  # The eval split as the training loop reads it: an endless stream of its own.
  ev = _take(run_data.get_dataset(config, 'eval', num_devices=1), 3)
  assert ev[2]['image'].shape == (2, 8, SIZE, SIZE, 3)


def test_no_tensorflow_on_this_path(tree):
  code = ('import sys; from scoresde_jax import datasets; '
          f'spec = datasets.DataSpec("FOLDER", image_size=8, num_channels=3, path={tree!r}); '
          'next(datasets.get_dataset(spec, "train", batch_size=4, seed=0, num_devices=1)); '
          'assert not any(m.split(".")[0] in ("tensorflow", "tensorflow_datasets") '
          'for m in sys.modules), "TensorFlow imported"')
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=REPO, timeout=120)


# ---------------------------------------------------------------------------------------------
# Bad input: one line each.


def _error(exc, match, spec, **kwargs):
  # Raised by get_dataset itself, before any batch: the headers are checked up front.
  with pytest.raises(exc, match=match) as info:
    _folder(spec, **kwargs)
  assert '\n' not in str(info.value) and isinstance(info.value, errors.UserError)
  return str(info.value)


def test_path_unset_missing_not_a_directory_or_without_images(tmp_path):
  with pytest.raises(errors.ConfigError, match='^data.path is unset'):
    run_data.data_spec(_config(''))
  with pytest.raises(errors.ArgumentError, match='^path is unset'):
    datasets.DataSpec('FOLDER', image_size=SIZE, num_channels=3)
  with pytest.raises(errors.ConfigError, match='^data.image_size=0 must be a positive number'):
    run_data.data_spec(_config(tmp_path, image_size=0))
  missing = str(tmp_path / 'nope')
  _error(errors.DatasetNotFoundError, f"^data.path='{missing}' does not exist", _spec(missing))
  (tmp_path / 'file.png').write_bytes(b'')
  _error(errors.DatasetNotFoundError, 'is not a directory', _spec(tmp_path / 'file.png'))
  empty = tmp_path / 'empty'
  (empty / 'sub').mkdir(parents=True)
  (empty / 'sub' / 'readme.txt').write_text('hi')
  _error(errors.DatasetNotFoundError, r'holds no images \(files ending in .png, .jpg, .jpeg',
         _spec(empty))


def test_unreadable_and_truncated_images_are_named(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  root = tmp_path / 'bad_header'
  for i in range(3):
    _write(str(root / f'{i}.png'), _random_image(rng, 24, 24))
  (root / 'broken.jpg').write_bytes(b'this is not a JPEG')
  _error(errors.DatasetError, f"^Cannot read the image {root / 'broken.jpg'}: cannot identify",
         _spec(root))
  # Truncated inside the pixel data: the header reads, the first decode fails; even when other
  # code of the process asked PIL to load truncated files.
  monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
  for fmt in ('PNG', 'JPEG'):
    root = tmp_path / f'truncated_{fmt}'
    for i in range(3):
      _write(str(root / f'{i}.png'), _random_image(rng, 24, 24))
    buf = io.BytesIO()
    _random_image(rng, 40, 30).save(buf, format=fmt)
    bad = root / f'cut.{fmt.lower()}'
    assert not datasets.folder_is_eval(bad.name)  # a training image
    bad.write_bytes(buf.getvalue()[:len(buf.getvalue()) * 2 // 3])
    it = _folder(_spec(root), batch_size=4)  # the header check passes
    with pytest.raises(errors.DatasetError, match=f'^Cannot read the image {bad}: image file '
                                                  'is truncated'):
      for _ in range(3):  # every image is decoded within the first (4 + 4) examples
        next(it)
  assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_mixed_channels_color_for_gray_and_odd_modes(tmp_path):
  rng = np.random.default_rng(3)
  _write(str(tmp_path / 'a' / 'gray.png'), _random_image(rng, 24, 24, mode='L'))
  _write(str(tmp_path / 'b' / 'color.jpg'), _random_image(rng, 24, 24, mode='RGB'))
  _write(str(tmp_path / 'b' / 'alpha.png'), _random_image(rng, 24, 24, mode='RGBA'))
  msg = _error(errors.DatasetError, 'mix gray and color', _spec(tmp_path))
  assert (f"{tmp_path / 'a' / 'gray.png'} (mode L)" in msg
          and f"{tmp_path / 'b' / 'alpha.png'} (mode RGBA)" in msg)
  os.remove(tmp_path / 'a' / 'gray.png')
  with pytest.raises(errors.ConfigError, match='^data.num_channels=1, but the images are color '
                                               r'\(e.g. .*alpha.png, mode RGBA\)'):
    next(run_data.get_dataset(_config(tmp_path, num_channels=1), num_devices=1))
  # RGBA: alpha dropped, as PIL's convert('RGB').
  rgba = datasets.load_folder_image(str(tmp_path / 'b' / 'alpha.png'), SIZE, 3)
  np.testing.assert_array_equal(rgba, np.round(_pil_expected(
      str(tmp_path / 'b' / 'alpha.png')) * 255).astype(np.uint8))
  Image.fromarray(np.zeros((24, 24), np.uint16)).save(tmp_path / 'b' / 'deep.png')  # 16-bit
  _error(errors.DatasetError, "deep.png has PIL mode 'I;16'; only 8-bit", _spec(tmp_path))


def test_small_images_refused_unless_upscale(tmp_path):
  rng = np.random.default_rng(4)
  _write(str(tmp_path / 'big.png'), _random_image(rng, 40, 30))
  _write(str(tmp_path / 'small.png'), _random_image(rng, 30, 12))
  _write(str(tmp_path / 'smaller.jpg'), _random_image(rng, 10, 10))
  msg = _error(errors.DatasetError, f"^The image {tmp_path / 'small.png'} is 30x12, smaller "
               r'than data.image_size=16 on its shorter side \(2 images are\)', _spec(tmp_path))
  assert 'data.upscale=True' in msg
  x = datasets.load_folder_image(str(tmp_path / 'small.png'), SIZE, 3, upscale=True)
  np.testing.assert_array_equal(x / np.float32(255.), _pil_expected(str(tmp_path / 'small.png')))
  assert next(_folder(_spec(tmp_path, upscale=True), batch_size=2))['image'].shape == (
      2, SIZE, SIZE, 3)


def test_root_and_class_images_mixed_and_empty_eval_split(tmp_path):
  rng = np.random.default_rng(5)
  _write(str(tmp_path / 'cls' / 'a.png'), _random_image(rng, 20, 20))
  _write(str(tmp_path / 'stray.png'), _random_image(rng, 20, 20))
  _error(errors.DatasetError, r"both directly in it \(e.g. 'stray.png', 1 in all\) and in "
         r"sub-folders \(e.g. 'cls/a.png'\)", _spec(tmp_path))
  os.remove(tmp_path / 'stray.png')
  assert not datasets.folder_is_eval('cls/a.png')
  _error(errors.DatasetError, r'^None of the 1 images under data.path=.* falls in the eval split',
         _spec(tmp_path), split='eval')
  assert next(_folder(_spec(tmp_path), batch_size=4))['image'].shape == (4, SIZE, SIZE, 3)


def test_spec_checks_are_named_by_config_key(tmp_path):
  with pytest.raises(errors.ConfigError, match='^data.num_channels=2: FOLDER'):
    run_data.data_spec(_config(tmp_path, num_channels=2))
  spec = dataclasses.replace(_spec(tmp_path), dataset='FOLDER')
  assert spec.upscale is False and spec.path == str(tmp_path)
