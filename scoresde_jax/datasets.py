"""Training and evaluation data: the paper's datasets with its preprocessing, and embedded digits.

Every dataset yields Python iterators of numpy batches, dicts

  {'image': float32 [B, H, W, C] in [0, 1], 'label': int32 [B]}

(`label` is -1 for datasets without labels: CelebA, LSUN, CelebA-HQ, FFHQ, FOLDER without
class sub-folders). Training streams may carry a leading axis of k fused steps
(`additional_dim`; the runs use `training.n_jitted_steps`), `[k, B, H, W, C]` and `[k, B]`, as
in the reference. One-pass evaluation streams (`evaluation=True`) keep every example: the last
batch is padded to full size and every batch carries `'mask': bool [B]` (False on padding).
Scaling to [-1, 1] for centered models is `get_data_scaler(centered)`, applied by the caller.

What to read is a `DataSpec` (the runs build it from `config.data`: `run.data.data_spec`).
Datasets (`DataSpec.dataset`):
  DIGITS    scikit-learn's 1,797 handwritten 8x8 digits (shipped with scikit-learn, no download),
            gray levels 0..16 scaled to [0, 1] and repeated to `image_size` (a multiple of 8);
            a fixed 90/10 train/eval split. Pure numpy: TensorFlow is never imported.
  CIFAR10   tfds 'cifar10' (train / test), bilinear antialiased resize to `image_size`.
  SVHN      tfds 'svhn_cropped' (train / test), as CIFAR10.
  MNIST     tfds 'mnist' (train / test), as CIFAR10; gray, repeated to 3 channels if asked.
  CELEBA    tfds 'celeb_a' (train / validation): central 140x140 crop, then the shorter side
            resized to `image_size` (bilinear, antialiased).
  LSUN      tfds 'lsun/<category>' (train / validation): for image_size 128 the shorter
            side resized to 128 then a central crop; otherwise a central square crop resized
            bicubically (antialiased) and rounded down to uint8.
  CelebAHQ, FFHQ  TFRecords at `tfrecords_path` (a file or glob), one record per image with
            features 'shape' (int64 [3], C, H, W) and 'data' (raw uint8 bytes, CHW), as written
            by the progressive-GAN / StyleGAN `dataset_tool.py`; train and eval read the same files.
  FOLDER    your own images: every .png / .jpg / .jpeg file (any case; hidden files and folders
            skipped) under the directory `path`, decoded with PIL, TensorFlow never imported.
            Labels: images in first-level sub-folders are labelled by them (the sorted names of
            the sub-folders that hold images, index = label; deeper folders belong to their
            first-level one); images directly in `path` have label -1 (unlabelled); a tree with
            both is refused. Split (`folder_is_eval`): an image is in eval when
            int.from_bytes(sha1(relpath)[:8], 'big') % 100 < 10, relpath its path relative to
            `path` ('/'-separated, UTF-8), else in train: about 10%, and an image keeps its
            split when others are added or removed. Each image is cropped to its central square (offsets rounded down), then
            resized to `image_size` with PIL's antialiased BICUBIC filter (as clean-fid) and
            rounded to uint8; no EXIF rotation. Images whose shorter side is below `image_size`
            are refused unless `upscale`. Gray images (PIL modes 1, L, LA) are repeated to 3
            channels when `num_channels` is 3; color ones (RGB, RGBA, P, PA, CMYK, YCbCr) are
            converted to RGB (alpha dropped). Every file's header is read once when the stream
            is made (mixed gray and color images, too small images, unreadable headers fail
            then); pixels are decoded lazily, per batch, in a thread pool, one batch ahead, with
            the last `FOLDER_CACHE_BYTES` of decoded images kept. A truncated file fails when
            first decoded (PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` is kept off).

Preprocessing as the reference: random left-right flip when `random_flip` (training streams
only), uniform dequantization `(x * 255 + u) / 256`, `u ~ U[0, 1)`, when asked.

Determinism and resumption. A training stream is a pure function of (seed, training step): the
batch of step s is the same whether the run started at 0 or was resumed with `start_step=s`.
- DIGITS: the stream is a chain of seeded permutations of the training set (one per epoch);
  step s takes positions [s * B, (s + 1) * B) of that chain; flips and dequantization noise come
  from a generator seeded by (seed, s). The global batch does not depend on the number of hosts;
  each host keeps its slice.
- FOLDER: the same chain of permutations of the split's images (sorted by relative path); each
  host decodes only the images of its slice, and draws an example's flip and noise from a
  generator seeded by (seed, s, position in the global batch), so the global batch does not
  depend on the number of hosts either. One-pass evaluation: the split in path order, global
  batches, each host its slice.
- tfds / TFRecords: each host reads its own shard (`tfds.even_splits` / `Dataset.shard`). Epoch e
  reads its shard with files and examples shuffled by a seed derived from (seed, host, e), drops
  the remainder that does not fill a batch, and draws flips and noise with stateless random ops
  keyed by (epoch seed, position in epoch). tf.data runs with `deterministic = True`. Resuming
  at step s starts epoch s // steps_per_epoch and skips the first (s % steps_per_epoch) * B
  examples of it before decoding work is done on them; it costs reading at most one epoch.
  For TFRecords the number of records is counted once (one read of the files) when resuming.

Bad values of a spec field, the batch size or the number of fused steps raise
`errors.ArgumentError` (a ValueError), whose message can name the setting the way the
caller's user set it.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import logging
import os
import struct
import weakref
import zlib
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np

# DatasetNotFoundError is also this module's name for it: callers catch
# `datasets.DatasetNotFoundError`.
from scoresde_jax.errors import ArgumentError, DatasetError, DatasetNotFoundError

log = logging.getLogger(__name__)

SUPPORTED_DATASETS = ('DIGITS', 'CIFAR10', 'SVHN', 'MNIST', 'CELEBA', 'LSUN', 'CelebAHQ', 'FFHQ',
                      'FOLDER')

# tfds name, train split, eval split (the reference's choices).
_TFDS = {
    'CIFAR10': ('cifar10', 'train', 'test'),
    'SVHN': ('svhn_cropped', 'train', 'test'),
    'MNIST': ('mnist', 'train', 'test'),
    'CELEBA': ('celeb_a', 'train', 'validation'),
    'LSUN': ('lsun/{category}', 'train', 'validation'),
}
_TFRECORDS = ('CelebAHQ', 'FFHQ')

# The digits split is fixed (not the run's seed) so every run evaluates on the same held-out
# images.
DIGITS_SPLIT_SEED = 0
DIGITS_EVAL_FRACTION = 0.1

Batch = Dict[str, np.ndarray]


def _check_digits_shape(image_size: int, num_channels: int) -> None:
  if image_size <= 0 or image_size % 8:
    raise ArgumentError('image_size', '{name}={size}: DIGITS images are 8x8, upsampled by '
                         'pixel repetition, so image_size must be a positive multiple of 8 '
                         '(e.g. 16).', size=image_size)
  if num_channels not in (1, 3):
    raise ArgumentError('num_channels', '{name}={channels}: DIGITS is grayscale; use 1 (or 3).',
                         channels=num_channels)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which dataset to read and how to preprocess it (the runs' `config.data.<field>`).

  Attributes:
    dataset: one of SUPPORTED_DATASETS.
    image_size: side S of the square images, pixels.
    num_channels: C of the images (1 or 3; gray datasets are repeated to 3 channels if asked).
    centered: the model sees data in [-1, 1] instead of [0, 1] (`get_data_scaler`).
    random_flip: random left-right flips of training streams.
    uniform_dequantization: add U[0, 1) / 256 noise to the 8-bit pixel levels.
    data_dir: tfds data directory; None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
    tfrecords_path: file or glob of the TFRecords of CelebAHQ and FFHQ.
    category: the LSUN category (e.g. 'church_outdoor'); LSUN only.
    path: the directory of images of FOLDER.
    upscale: FOLDER: upscale (bicubic) images whose shorter side is below image_size; otherwise
      such images are refused.

  Raises (on construction):
    ArgumentError: an unknown dataset, a size DIGITS cannot make, LSUN without a category,
      FOLDER without a path.
  """
  dataset: str
  image_size: int
  num_channels: int
  centered: bool = False
  random_flip: bool = False
  uniform_dequantization: bool = False
  data_dir: Optional[str] = None
  tfrecords_path: str = ''
  category: Optional[str] = None
  path: str = ''
  upscale: bool = False

  def __post_init__(self):
    if self.dataset not in SUPPORTED_DATASETS:
      raise ArgumentError('dataset', '{name}={dataset!r} is not supported; choose one of '
                           '{choices}.', dataset=self.dataset,
                           choices=', '.join(SUPPORTED_DATASETS))
    if self.dataset == 'DIGITS':
      _check_digits_shape(self.image_size, self.num_channels)
    if self.dataset == 'LSUN' and not self.category:
      raise ArgumentError('category', '{name} must name the LSUN category (e.g. '
                           '"church_outdoor").')
    if self.dataset == 'FOLDER':
      if not self.path:
        raise ArgumentError('path', '{name} is unset: set it to a directory of PNG / JPEG images '
                             '(in one sub-folder per class, or all directly in it).')
      if not isinstance(self.image_size, (int, np.integer)) or self.image_size <= 0:
        raise ArgumentError('image_size', '{name}={size!r} must be a positive number of pixels.',
                             size=self.image_size)
      if self.num_channels not in (1, 3):
        raise ArgumentError('num_channels', '{name}={channels}: FOLDER images are read as gray '
                             '(1) or RGB (3).', channels=self.num_channels)


def get_data_scaler(centered: bool) -> Callable:
  """Maps data in [0, 1] to the model's range: [-1, 1] (`x * 2 - 1`) when `centered`."""
  if centered:
    return lambda x: x * 2. - 1.
  return lambda x: x


def get_data_inverse_scaler(centered: bool) -> Callable:
  """Inverse of `get_data_scaler`: maps the model's range back to [0, 1]."""
  if centered:
    return lambda x: (x + 1.) / 2.
  return lambda x: x


def host_batch_size(batch_size: int, num_devices: int, num_processes: int = 1,
                    name: str = 'batch_size') -> int:
  """Examples per host of a global batch split over `num_devices` devices on `num_processes` hosts.

  Raises:
    ArgumentError: the batch does not split evenly over the devices (or hosts); the message
      calls the batch size `name`.
  """
  if batch_size <= 0:
    raise ArgumentError(name, '{name}={size} must be positive.', size=batch_size)
  if batch_size % num_devices:
    raise ArgumentError(name, '{name}={size} is not divisible by the {n} devices; use a '
                         'multiple of {n}.', size=batch_size, n=num_devices)
  if batch_size % num_processes:
    raise ArgumentError(name, '{name}={size} is not divisible by the {n} hosts.',
                         size=batch_size, n=num_processes)
  return batch_size // num_processes


def _seed_int(*entropy: int) -> int:
  """A 32-bit seed derived from a tuple of ints (independent streams per tuple)."""
  seq = np.random.SeedSequence([int(e) % 2**64 for e in entropy])
  return int(seq.generate_state(1, np.uint32)[0])


# ----------------------------------------------------------------------------------------------
# DIGITS (pure numpy).


def digits_split_indices(num_examples: int = 1797) -> Tuple[np.ndarray, np.ndarray]:
  """Indices into `sklearn.datasets.load_digits()` of the train and eval sets (disjoint, sorted)."""
  perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(num_examples)
  num_eval = int(round(DIGITS_EVAL_FRACTION * num_examples))
  return np.sort(perm[num_eval:]), np.sort(perm[:num_eval])


def load_digits(split: str = 'train', image_size: int = 16,
                num_channels: int = 1) -> Tuple[np.ndarray, np.ndarray]:
  """The digits of `split` ('train' or 'eval').

  Returns:
    images: float32 [N, image_size, image_size, num_channels] in [0, 1] (gray level / 16, each
      8x8 pixel repeated into an (image_size / 8)-square block);
    labels: int32 [N], the digit 0..9.
  """
  _check_digits_shape(image_size, num_channels)
  if split not in ('train', 'eval'):
    raise ValueError(f"split={split!r}: use 'train' or 'eval'.")
  pixels, targets = _sklearn_digits()
  train_idx, eval_idx = digits_split_indices(len(targets))
  idx = train_idx if split == 'train' else eval_idx
  x = pixels[idx].reshape(-1, 8, 8).astype(np.float32) / 16.
  r = image_size // 8
  x = np.repeat(np.repeat(x, r, axis=1), r, axis=2)[..., None]
  x = np.repeat(x, num_channels, axis=-1)
  return np.ascontiguousarray(x), targets[idx].astype(np.int32)


def _sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
  """`sklearn.datasets.load_digits()`'s pixels [1797, 64] and digits, read from the CSV file
  scikit-learn ships (each row 64 gray levels 0..16, then the digit) without importing
  scikit-learn, which costs seconds of every start."""
  spec = importlib.util.find_spec('sklearn')
  if spec is None or spec.origin is None:
    raise DatasetError('The digits dataset comes with scikit-learn: pip install scikit-learn.')
  path = os.path.join(os.path.dirname(spec.origin), 'datasets', 'data', 'digits.csv.gz')
  table = np.loadtxt(path, delimiter=',')
  return table[:, :-1], table[:, -1].astype(np.int32)


def _augment(x: np.ndarray, rng: np.random.Generator, random_flip: bool,
             uniform_dequantization: bool) -> np.ndarray:
  """Random left-right flips and uniform dequantization of x: [B, H, W, C] in [0, 1]."""
  if random_flip:
    flip = rng.random(x.shape[0]) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
  if uniform_dequantization:
    x = (x * 255. + rng.random(x.shape, dtype=np.float32)) / 256.
  return x.astype(np.float32)


def digits_batch(images: np.ndarray, labels: np.ndarray, *, seed: int, step: int,
                 batch_size: int, random_flip: bool = False,
                 uniform_dequantization: bool = False, stream: int = 0) -> Batch:
  """The global batch of training step `step`: a pure function of (seed, stream, step).

  The stream is the chain of permutations perm_0, perm_1, ... of the N examples, perm_e drawn
  from (seed, stream, e); step s takes its positions [s * B, (s + 1) * B).
  """
  idx = _chain_indices(len(images), seed=seed, stream=stream, step=step, batch_size=batch_size)
  rng = np.random.default_rng([int(seed) % 2**64, stream, 1, int(step)])
  x = _augment(images[idx], rng, random_flip, uniform_dequantization)
  return {'image': x, 'label': labels[idx]}


def _chain_indices(n: int, *, seed: int, stream: int, step: int, batch_size: int) -> np.ndarray:
  """Example indices int64 [batch_size] of step `step` of the chain of permutations of n examples.

  perm_e is drawn from (seed, stream, e); step s takes positions [s * B, (s + 1) * B) of
  perm_0 + perm_1 + ... (DIGITS and FOLDER training streams).
  """
  seed = int(seed) % 2**64  # numpy seeds are non-negative
  pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, within = np.divmod(pos, n)
  idx = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, stream, 0, int(e)]).permutation(n)
    sel = epochs == e
    idx[sel] = perm[within[sel]]
  return idx


def _digits_stream(spec, split, seed, start_step, global_batch, host_slice, evaluation,
                   random_flip, uniform_dequantization) -> Iterator[Batch]:
  images, labels = load_digits(split, spec.image_size, spec.num_channels)
  lo, hi = host_slice
  if evaluation:
    # One pass in a fixed order; the last batch is padded and masked.
    rng = np.random.default_rng([int(seed) % 2**64, 2, 1])
    for start in range(0, len(images), global_batch):
      x, y = images[start:start + global_batch], labels[start:start + global_batch]
      x = _augment(x, rng, False, uniform_dequantization)
      batch = _pad({'image': x, 'label': y}, global_batch)
      yield {k: v[lo:hi] for k, v in batch.items()}
    return
  stream = 0 if split == 'train' else 1
  step = start_step
  while True:
    batch = digits_batch(images, labels, seed=seed, step=step, batch_size=global_batch,
                         random_flip=random_flip, uniform_dequantization=uniform_dequantization,
                         stream=stream)
    yield {k: v[lo:hi] for k, v in batch.items()}
    step += 1


def _pad(batch: Batch, size: int) -> Batch:
  """Pads a one-pass batch to `size` examples (copies of the last) and adds 'mask': bool [size]."""
  n = len(batch['label'])
  mask = np.arange(size) < n
  if n < size:
    batch = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in batch.items()}
  return {**batch, 'mask': mask}


def _group(steps: Iterator[Batch], k: int) -> Iterator[Batch]:
  """Stacks k consecutive per-step batches: {'image': [k, B, ...], 'label': [k, B]}."""
  while True:
    chunk = [next(steps) for _ in range(k)]
    yield {key: np.stack([c[key] for c in chunk]) for key in chunk[0]}


# ----------------------------------------------------------------------------------------------
# FOLDER: a directory tree of PNG / JPEG images, read with PIL (TensorFlow is never imported).

FOLDER_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# Percent of the images in the eval split (by the hash of their relative path).
FOLDER_EVAL_PERCENT = 10
# Decoded, resized uint8 images kept between batches (a dataset this small is decoded once).
FOLDER_CACHE_BYTES = 256 * 2**20
_GRAY_MODES = ('1', 'L', 'LA')
_COLOR_MODES = ('P', 'PA', 'RGB', 'RGBA', 'CMYK', 'YCbCr')
# What PIL raises for a file it cannot read (not a bug of ours: the message names the file).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `labels` is an array
class FolderIndex:
  """The images of a FOLDER tree (`scan_folder`).

  Attributes:
    root: the absolute path of the directory.
    files: paths relative to root, '/'-separated, sorted.
    labels: int32 [N], the index of each file's first-level sub-folder in `classes`; -1 for
      images directly in root.
    classes: sorted names of the first-level sub-folders that hold images (empty when the
      images are directly in root).
  """
  root: str
  files: Tuple[str, ...]
  labels: np.ndarray
  classes: Tuple[str, ...]

  def split(self, split: str) -> np.ndarray:
    """Indices into `files` (sorted) of the 'train' or 'eval' split (`folder_is_eval`)."""
    is_eval = np.array([folder_is_eval(f) for f in self.files], bool)
    return np.flatnonzero(is_eval if split == 'eval' else ~is_eval)


def folder_is_eval(relpath: str) -> bool:
  """Whether the image at `relpath` (relative to data.path, '/'-separated) is in the eval split:
  the first 8 bytes of its SHA-1, big-endian, mod 100, below FOLDER_EVAL_PERCENT."""
  digest = hashlib.sha1(relpath.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') % 100 < FOLDER_EVAL_PERCENT


def scan_folder(path: str) -> FolderIndex:
  """Lists the images under `path` (see FOLDER in the module docstring); reads no image.

  Raises:
    DatasetNotFoundError: `path` is not a directory, or holds no PNG / JPEG file.
    DatasetError: images both directly in `path` and in sub-folders.
  """
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(root):
    what = 'is not a directory' if os.path.exists(root) else 'does not exist'
    raise DatasetNotFoundError(f'data.path={path!r} {what}: set it to a directory of PNG / JPEG '
                               'images (one sub-folder per class, or all directly in it).')
  files, visited = [], set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in visited:  # a folder listed already, through a symbolic link (or a loop)
      dirnames[:] = []
      continue
    visited.add(real)
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    rel_dir = os.path.relpath(dirpath, root)
    for name in filenames:
      if name.startswith('.') or not name.lower().endswith(FOLDER_EXTENSIONS):
        continue
      rel = name if rel_dir == os.curdir else os.path.join(rel_dir, name)
      files.append(rel.replace(os.sep, '/'))
  files.sort()
  if not files:
    raise DatasetNotFoundError(f'data.path={path!r} holds no images (files ending in '
                               f'{", ".join(FOLDER_EXTENSIONS)}, at any depth).')
  top = [f for f in files if '/' not in f]
  nested = [f for f in files if '/' in f]
  if top and nested:
    raise DatasetError(f'data.path={path!r} holds images both directly in it (e.g. {top[0]!r}, '
                       f'{len(top)} in all) and in sub-folders (e.g. {nested[0]!r}), whose names '
                       'are the class labels: move the former into a sub-folder, or all images '
                       'out of the sub-folders for an unlabelled dataset.')
  if not nested:
    return FolderIndex(root, tuple(files), np.full(len(files), -1, np.int32), ())
  classes = tuple(sorted({f.split('/', 1)[0] for f in files}))
  label_of = {c: i for i, c in enumerate(classes)}
  labels = np.array([label_of[f.split('/', 1)[0]] for f in files], np.int32)
  return FolderIndex(root, tuple(files), labels, classes)


def _read_header(file: str) -> Tuple[Tuple[int, int], str]:
  """(width, height) and PIL mode of an image file; reads its header only."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(file) as im:
      return im.size, im.mode
  except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
    raise DatasetError(f'Cannot read the image {file}: {e}. Re-save it or remove it.') from e


def _too_small_message(file: str, size: Tuple[int, int], image_size: int, count: int = 1) -> str:
  others = f' ({count} images are)' if count > 1 else ''
  return (f'The image {file} is {size[0]}x{size[1]}, smaller than data.image_size={image_size} '
          f'on its shorter side{others}: lower data.image_size, remove such images, or set '
          'data.upscale=True to upscale them (bicubic).')


def check_folder_images(index: FolderIndex, image_size: int, num_channels: int,
                        upscale: bool = False, num_threads: Optional[int] = None) -> None:
  """Reads the header of every image of `index` and refuses a tree that cannot make batches.

  Raises:
    DatasetError: an unreadable header; a mode other than 8-bit gray or color; gray and color
      images together (two examples named, with their modes); an image whose shorter side is
      below image_size unless `upscale`.
    ArgumentError: color images and num_channels=1.
  """
  paths = [os.path.join(index.root, f) for f in index.files]
  with concurrent.futures.ThreadPoolExecutor(num_threads or min(16, os.cpu_count() or 1)) as pool:
    headers = list(pool.map(_read_header, paths))
  gray = color = None
  small = []
  for path, (size, mode) in zip(paths, headers):
    if mode in _GRAY_MODES:
      gray = gray or (path, mode)
    elif mode in _COLOR_MODES:
      color = color or (path, mode)
    else:
      raise DatasetError(f'The image {path} has PIL mode {mode!r}; only 8-bit gray '
                         f'({", ".join(_GRAY_MODES)}) and color ({", ".join(_COLOR_MODES)}) '
                         'images are read: convert it to 8-bit.')
    if min(size) < image_size and not upscale:
      small.append((path, size))
  if gray and color:
    n_gray = sum(m in _GRAY_MODES for _, m in headers)
    raise DatasetError(f'The images under {index.root} mix gray and color: {gray[0]} (mode '
                       f'{gray[1]}) and {color[0]} (mode {color[1]}); {n_gray} of '
                       f'{len(paths)} are gray. Convert them to one kind (e.g. all to RGB).')
  if color and num_channels == 1:
    raise ArgumentError('num_channels', '{name}=1, but the images are color (e.g. {path}, '
                         'mode {mode}): use 3, or convert them to gray.', path=color[0],
                         mode=color[1])
  if small:
    raise DatasetError(_too_small_message(*small[0], image_size, len(small)))


def load_folder_image(file: str, image_size: int, num_channels: int,
                      upscale: bool = False) -> np.ndarray:
  """One image of a FOLDER dataset: uint8 [image_size, image_size, num_channels].

  Decoded in full (a truncated file raises), converted to L (gray modes) or RGB (color
  modes, alpha dropped), cropped to its central square (offsets rounded down), resized with
  PIL's BICUBIC filter (antialiased: its support scales with the reduction) unless already at
  image_size; gray repeated to 3 channels if num_channels is 3.

  Raises:
    DatasetError: the file cannot be decoded (named), an unsupported mode, a color image and
      num_channels=1, a shorter side below image_size unless `upscale`.
  """
  from PIL import Image, ImageFile  # pylint: disable=import-outside-toplevel
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    # Set by other code of this process; with it PIL silently pads a truncated file.
    log.warning('PIL ImageFile.LOAD_TRUNCATED_IMAGES was set; resetting it to False so that '
                'truncated images are reported.')
    ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    with Image.open(file) as im:
      im.load()
      mode = im.mode
      if mode in _GRAY_MODES:
        im = im.convert('L')
      elif mode in _COLOR_MODES:
        im = im.convert('RGB')
  except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
    raise DatasetError(f'Cannot read the image {file}: {e}. Re-save it or remove it.') from e
  if mode not in _GRAY_MODES + _COLOR_MODES:
    raise DatasetError(f'The image {file} has PIL mode {mode!r}; only 8-bit gray and color '
                       'images are read: convert it to 8-bit.')
  if im.mode == 'RGB' and num_channels == 1:
    raise DatasetError(f'The image {file} is color (mode {mode}), but data.num_channels=1.')
  width, height = im.size
  side = min(width, height)
  if side < image_size and not upscale:
    raise DatasetError(_too_small_message(file, im.size, image_size))
  left, top = (width - side) // 2, (height - side) // 2
  im = im.crop((left, top, left + side, top + side))
  if side != image_size:
    im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
  x = np.asarray(im, np.uint8)
  if x.ndim == 2:
    x = np.repeat(x[..., None], num_channels, axis=-1)
  return x


class _FolderReader:
  """Decodes images of a FolderIndex in a thread pool, keeping recent ones (FOLDER_CACHE_BYTES)."""

  def __init__(self, index: FolderIndex, spec: DataSpec):
    self._paths = [os.path.join(index.root, f) for f in index.files]
    self._args = (spec.image_size, spec.num_channels, spec.upscale)
    per_image = spec.image_size ** 2 * spec.num_channels
    self._capacity = max(1, FOLDER_CACHE_BYTES // per_image)
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._in_flight: Dict[int, concurrent.futures.Future] = {}  # an image in two batches ahead
    self._pool = concurrent.futures.ThreadPoolExecutor(
        min(8, os.cpu_count() or 1), thread_name_prefix='folder_decode')

  def _decode(self, i: int) -> np.ndarray:
    return load_folder_image(self._paths[i], *self._args)

  def start(self, idx: np.ndarray) -> Callable[[], np.ndarray]:
    """Starts decoding images `idx` (indices into the index's files); returns a function that
    waits for them: uint8 [len(idx), S, S, C]. Called from one thread only."""
    have, futures = {}, {}
    for i in dict.fromkeys(idx.tolist()):
      x = self._cache.get(i)
      if x is not None:
        self._cache.move_to_end(i)
        have[i] = x  # kept here even if evicted before the batch is collected
      else:
        if i not in self._in_flight:
          self._in_flight[i] = self._pool.submit(self._decode, i)
        futures[i] = self._in_flight[i]

    def collect():
      for i, future in futures.items():
        have[i] = future.result()
        self._in_flight.pop(i, None)
        self._cache[i] = have[i]
        if len(self._cache) > self._capacity:
          self._cache.popitem(last=False)
      return np.stack([have[i] for i in idx.tolist()])

    return collect

  def close(self):
    self._pool.shutdown(wait=False, cancel_futures=True)


def _augment_examples(x: np.ndarray, positions: Sequence[int], entropy: Sequence[int],
                      random_flip: bool, uniform_dequantization: bool) -> np.ndarray:
  """`_augment` of each example of x: float32 [n, H, W, C] in [0, 1] with a generator of its own,
  seeded by (*entropy, position in the global batch): no draw depends on the host split."""
  if not (random_flip or uniform_dequantization):
    return x
  out = np.empty_like(x)
  for row, pos in enumerate(positions):
    rng = np.random.default_rng([*entropy, int(pos)])
    out[row] = _augment(x[row:row + 1], rng, random_flip, uniform_dequantization)[0]
  return out


def _folder_stream(spec, split, seed, start_step, global_batch, host_slice, evaluation,
                   random_flip, uniform_dequantization) -> Iterator[Batch]:
  """Per-step host batches of FOLDER; the tree is scanned and checked before this returns."""
  index = scan_folder(spec.path)
  check_folder_images(index, spec.image_size, spec.num_channels, spec.upscale)
  members = index.split(split)
  if not len(members):
    raise DatasetError(f'None of the {len(index.files)} images under data.path={spec.path!r} '
                       f'falls in the {split} split (about {FOLDER_EVAL_PERCENT}% go to eval, '
                       'by a hash of their relative path): add images.')
  log.info('FOLDER %s: %d images, %d in the %s split, %d classes%s.', index.root,
           len(index.files), len(members), split, len(index.classes),
           f' ({", ".join(index.classes[:10])}{", ..." if len(index.classes) > 10 else ""})'
           if index.classes else '')
  labels = index.labels
  seed = int(seed) % 2**64
  lo, hi = host_slice
  split_id = 0 if split == 'train' else 1

  if evaluation:
    # One pass in path order in global batches, the last padded (copies of its last image) and
    # masked; each host decodes its rows. Noise is seeded by the position in the pass.
    num_steps, first = -(-len(members) // global_batch), 0

    def plan(b):
      n = min(global_batch, len(members) - b * global_batch)
      pos = b * global_batch + np.minimum(np.arange(global_batch), n - 1)[lo:hi]
      mask = (np.arange(global_batch) < n)[lo:hi]
      return members[pos], pos, (seed, 2, split_id), False, {'mask': mask}
  else:
    num_steps, first = None, start_step

    def plan(step):
      idx = _chain_indices(len(members), seed=seed, stream=split_id, step=step,
                           batch_size=global_batch)[lo:hi]
      return members[idx], range(lo, hi), (seed, split_id, 1, step), random_flip, {}

  reader = _FolderReader(index, spec)

  def begin(s):
    idx, *rest = plan(s)
    return (idx, *rest, reader.start(idx))

  def finish(idx, positions, entropy, flip, extra, collect):
    x = _augment_examples(collect().astype(np.float32) / 255., positions, entropy, flip,
                          uniform_dequantization)
    return {'image': x, 'label': labels[idx], **extra}

  def stream():
    s, pending = first, begin(first)
    while True:
      following = begin(s + 1) if num_steps is None or s + 1 < num_steps else None
      yield finish(*pending)  # the next batch decodes meanwhile
      if following is None:
        return
      s, pending = s + 1, following

  steps = stream()
  # The decoding threads end with the stream: when it is collected (or at exit), not in a
  # `finally` of the generator, which at interpreter exit runs after concurrent.futures is gone.
  weakref.finalize(steps, reader.close)
  return steps


# ----------------------------------------------------------------------------------------------
# tfds and TFRecords (TensorFlow is imported only here).


def _missing_tfds_message(dataset: str, tfds_name: str, data_dir: Optional[str]) -> str:
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  extra = ''
  if dataset == 'CELEBA':
    extra = (' CelebA\'s files come from Google Drive, which often refuses automated downloads; '
             'tfds then tells you where to put the manually downloaded files.')
  elif dataset == 'LSUN':
    extra = ' LSUN is large (church_outdoor ~2.3 GB, bedroom ~43 GB).'
  return (f'Dataset {dataset} (tfds {tfds_name!r}) is not prepared in {where}. Prepare it once '
          f'with `tfds build {tfds_name}` (add `--data_dir={where}` for another location) or '
          f'`python -c "import tensorflow_datasets as tfds; '
          f'tfds.builder(\'{tfds_name}\').download_and_prepare()"`, or call get_dataset(..., '
          f'download=True).{extra}')


def _missing_tfrecords_message(dataset: str, path: str) -> str:
  # Names the config key: the runs' users set the path there.
  what = ('data.tfrecords_path is unset' if not path
          else f'data.tfrecords_path={path!r} matches no file')
  return (f'{dataset} is read from TFRecords and {what}. Create them with `dataset_tool.py` of '
          'NVlabs/progressive_growing_of_gans (`create_celebahq`) or NVlabs/stylegan '
          '(`create_from_images`, for FFHQ): one file per resolution, e.g. `ffhq-r08.tfrecords` '
          'for 256x256 and `-r10` for 1024x1024; then pass '
          '`--config.data.tfrecords_path=/path/to/that-file.tfrecords` (a glob is accepted).')


def _channels_error(dataset: str, stored: int, wanted: int) -> ArgumentError:
  return ArgumentError('num_channels', '{dataset} images have {stored} channels but '
                        '{name}={wanted}.', dataset=dataset, stored=stored, wanted=wanted)


def _tf_preprocess_fn(spec: DataSpec):
  """The reference's per-dataset resize: uint8 [h, w, c] -> float32 [S, S, C] in [0, 1]."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  dataset, size = spec.dataset, spec.image_size

  def to_float(img):
    return tf.image.convert_image_dtype(img, tf.float32)

  def resize_small(img, resolution):
    # Shorter side to `resolution`, aspect kept, rounded (bilinear, antialiased).
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    ratio = resolution / tf.reduce_min(hw)
    new_hw = tf.cast(tf.round(hw * ratio), tf.int32)
    return tf.image.resize(img, new_hw, antialias=True)

  def central_crop(img, crop):
    top = (tf.shape(img)[0] - crop) // 2
    left = (tf.shape(img)[1] - crop) // 2
    return tf.image.crop_to_bounding_box(img, top, left, crop, crop)

  if dataset in ('CIFAR10', 'SVHN', 'MNIST'):
    def resize(img):
      return tf.image.resize(to_float(img), [size, size], antialias=True)
  elif dataset == 'CELEBA':
    def resize(img):
      return resize_small(central_crop(to_float(img), 140), size)
  elif dataset == 'LSUN' and size == 128:
    def resize(img):
      return central_crop(resize_small(to_float(img), size), size)
  elif dataset == 'LSUN':
    def resize(img):
      side = tf.reduce_min(tf.shape(img)[:2])
      img = central_crop(img, side)
      img = tf.image.resize(img, [size, size], antialias=True,
                            method=tf.image.ResizeMethod.BICUBIC)
      # The reference casts the bicubic result to uint8 (truncation); clipping first keeps the
      # overshoot of bicubic interpolation from wrapping around.
      return to_float(tf.cast(tf.clip_by_value(img, 0., 255.), tf.uint8))
  else:  # TFRecords: already at their resolution.
    resize = to_float

  channels = spec.num_channels

  def preprocess(img):
    img = resize(img)
    if img.shape[-1] == 1 and channels == 3:
      img = tf.image.grayscale_to_rgb(img)
    if img.shape[-1] is not None and img.shape[-1] != channels:
      raise _channels_error(dataset, img.shape[-1], channels)
    return tf.ensure_shape(img, [size, size, channels])

  return preprocess


class _TFSource:
  """A host's shard of a split, readable epoch by epoch with a per-epoch shuffle seed."""

  def __init__(self, spec, split, download, process_index, process_count, evaluation):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    self._tf, self._tfds = tf, tfds
    self.options = tf.data.Options()
    self.options.deterministic = True
    self.options.experimental_optimization.map_parallelization = True
    self.channels = None  # of the stored images, where known before reading
    dataset, data_dir = spec.dataset, spec.data_dir or None
    if dataset in _TFRECORDS:
      path = spec.tfrecords_path
      files = sorted(tf.io.gfile.glob(path)) if path else []
      if not files:
        raise DatasetNotFoundError(_missing_tfrecords_message(dataset, path))
      self._files, self._builder = files, None
      self._shard = (process_index, process_count)
      return
    name, train_split, eval_split = _TFDS[dataset]
    if dataset == 'LSUN':
      name = name.format(category=spec.category)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
      raise DatasetNotFoundError(f'tfds has no dataset {name!r}: {e}') from e
    except ValueError as e:  # e.g. an unknown LSUN category (a tfds builder config)
      raise ArgumentError('category', 'tfds cannot build {tfds_name!r} (check {name}): '
                           '{reason}', tfds_name=name, reason=e) from e
    if download:
      builder.download_and_prepare()
    self._builder = builder
    self.channels = builder.info.features['image'].shape[-1]
    tfds_split = train_split if split == 'train' else eval_split
    if process_count > 1:
      # Evaluation drops the < process_count leftover examples so every host runs as many batches.
      tfds_split = tfds.even_splits(tfds_split, process_count,
                                    drop_remainder=evaluation)[process_index]
    self._split = tfds_split
    self._missing = _missing_tfds_message(dataset, name, data_dir)

  def read(self, shuffle_seed: Optional[int]):
    """Undecoded examples {'image': encoded, 'label': int32 []} of the shard, one pass.

    Images stay encoded (PNG/JPEG bytes, or the raw record) until `decode`, so the shuffle
    buffer is small and skipped examples cost no decoding.
    """
    tf, tfds = self._tf, self._tfds
    if self._builder is None:
      files = list(self._files)
      if shuffle_seed is not None:
        files = [files[i] for i in np.random.default_rng(shuffle_seed).permutation(len(files))]
      ds = tf.data.TFRecordDataset(files)
      if self._shard[1] > 1:
        ds = ds.shard(self._shard[1], self._shard[0])
      return ds.with_options(self.options).map(
          lambda record: {'image': record, 'label': tf.constant(-1, tf.int32)})
    read_config = tfds.ReadConfig(options=self.options, shuffle_seed=shuffle_seed)
    try:
      ds = self._builder.as_dataset(
          split=self._split, shuffle_files=shuffle_seed is not None, read_config=read_config,
          decoders={'image': tfds.decode.SkipDecoding()})
    except (AssertionError, tfds.core.DatasetNotFoundError) as e:
      # tfds raises AssertionError('... could not find data ...') for an unprepared dataset.
      raise DatasetNotFoundError(self._missing) from e

    def select(ex):
      label = ex['label'] if 'label' in ex else -1
      return {'image': ex['image'], 'label': tf.cast(label, tf.int32)}

    return ds.map(select)

  def decode(self, encoded):
    """uint8 [h, w, c] image of an element of `read`."""
    tf = self._tf
    if self._builder is not None:
      return self._builder.info.features['image'].decode_example(encoded)
    ex = tf.io.parse_single_example(encoded, features={
        'shape': tf.io.FixedLenFeature([3], tf.int64),
        'data': tf.io.FixedLenFeature([], tf.string)})
    img = tf.reshape(tf.io.decode_raw(ex['data'], tf.uint8), ex['shape'])
    return tf.transpose(img, (1, 2, 0))  # stored CHW

  def count(self, ds) -> int:
    """Examples in one pass of `ds` (from its cardinality, or by reading it once)."""
    n = int(ds.cardinality())
    if n < 0:
      n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def _tf_stream(spec, split, seed, start_step, host_batch, evaluation, random_flip,
               uniform_dequantization, download, process_index, process_count,
               shuffle_buffer_size) -> Iterator[Batch]:
  """Generator of per-step host batches (see the module docstring for the determinism scheme)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  dataset = spec.dataset
  source = _TFSource(spec, split, download, process_index, process_count, evaluation)
  channels, wanted = source.channels, spec.num_channels
  if channels is not None and channels != wanted and not (channels == 1 and wanted == 3):
    raise _channels_error(dataset, channels, wanted)
  resize = _tf_preprocess_fn(spec)
  split_id = 0 if split == 'train' else 1

  def pipeline(epoch_seed, shuffle, flip, skip):
    ds = source.read(epoch_seed if shuffle else None)
    if shuffle:
      ds = ds.shuffle(shuffle_buffer_size, seed=epoch_seed, reshuffle_each_iteration=False)
    # Positions are counted before skipping, so a resumed epoch draws the same noise.
    ds = ds.enumerate().skip(skip)

    def preprocess(i, ex):
      img = resize(source.decode(ex['image']))
      if flip:
        img = tf.image.stateless_random_flip_left_right(
            img, seed=tf.stack([tf.constant(epoch_seed, tf.int64), 2 * i]))
      if uniform_dequantization:
        u = tf.random.stateless_uniform(
            tf.shape(img), seed=tf.stack([tf.constant(epoch_seed, tf.int64), 2 * i + 1]))
        img = (img * 255. + u) / 256.
      return {'image': img, 'label': ex['label']}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(host_batch, drop_remainder=not evaluation)
    return ds.prefetch(tf.data.AUTOTUNE)

  # Build (and so validate) the first pass eagerly: a missing dataset fails at get_dataset time.
  if evaluation:
    epoch_seed = _seed_int(seed, split_id, process_index, 2 ** 31)
    first = pipeline(epoch_seed, shuffle=False, flip=False, skip=0)

    def one_pass():
      for b in first.as_numpy_iterator():
        yield _pad({'image': b['image'], 'label': b['label']}, host_batch)
    return one_pass()

  def epoch_seed_of(e):
    return _seed_int(seed, split_id, process_index, e)

  epoch, offset = 0, 0
  if start_step:
    n = source.count(source.read(None))
    steps_per_epoch = n // host_batch
    if steps_per_epoch == 0:
      raise DatasetError(f'The {split} shard of {dataset} on this host has {n} examples, fewer '
                         f'than one batch of {host_batch}.')
    epoch, offset = divmod(start_step, steps_per_epoch)
  first = pipeline(epoch_seed_of(epoch), True, random_flip, offset * host_batch)

  def stream():
    ds, e = first, epoch
    while True:
      empty = True
      for b in ds.as_numpy_iterator():
        empty = False
        yield {'image': b['image'], 'label': b['label']}
      if empty and e != epoch:
        raise DatasetError(f'The {split} shard of {dataset} on this host has fewer examples '
                           f'than one batch of {host_batch}.')
      e += 1
      ds = pipeline(epoch_seed_of(e), True, random_flip, 0)

  return stream()


# ----------------------------------------------------------------------------------------------
# Entry point.


def get_dataset(spec: DataSpec, split: str = 'train', *, batch_size: int, seed: int,
                evaluation: bool = False, start_step: int = 0,
                additional_dim: Optional[int] = None,
                uniform_dequantization: Optional[bool] = None, download: bool = False,
                num_devices: Optional[int] = None, process_index: Optional[int] = None,
                process_count: Optional[int] = None,
                shuffle_buffer_size: int = 10000) -> Iterator[Batch]:
  """An iterator of this host's numpy batches of `spec.dataset`.

  Args:
    spec: what to read and how to preprocess it.
    split: 'train', or 'eval' (the held-out split: test / validation, digits' 10%, FOLDER's
      hashed 10%).
    batch_size: global batch size (all hosts together).
    seed: seed of shuffling and augmentation.
    evaluation: one pass in a fixed order, no flips, last batch padded with a 'mask'.
      Otherwise an endless shuffled stream.
    start_step: the training step whose batch comes first (resumption): the stream equals the
      uninterrupted one from that step on. Training streams only.
    additional_dim: number k of fused steps per element, a leading axis [k, B, ...]; None: no
      axis. Training streams only.
    uniform_dequantization: default spec.uniform_dequantization.
    download: let tfds download and prepare a missing dataset (otherwise a missing dataset raises
      DatasetNotFoundError saying how to prepare it).
    num_devices, process_index, process_count: default jax.device_count(), jax.process_index(),
      jax.process_count().
    shuffle_buffer_size: examples in the tf.data shuffle buffer (tfds datasets).

  Returns:
    An iterator of {'image': float32 [(k,) B_host, H, W, C] in [0, 1], 'label': int32 [(k,) B_host]}
    (+ 'mask': bool [B_host] when `evaluation`), B_host = batch_size / process_count.

  Raises:
    ValueError: unknown split, start_step or additional_dim that do not fit the stream.
    ArgumentError: batch size not divisible by the devices, additional_dim < 1, spec values
      the stored data contradict (channels, LSUN category).
    DatasetNotFoundError: the dataset is not prepared on this machine (message says how to),
      or FOLDER's path is missing or holds no images.
    DatasetError: FOLDER images that cannot make batches (unreadable, gray and color mixed,
      smaller than image_size without upscale, none in the split); raised here, except a
      file that fails to decode, raised by the batch that first reads it.
  """
  if split not in ('train', 'eval'):
    raise ValueError(f"split={split!r}: use 'train' or 'eval'.")
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  if evaluation and start_step:
    raise ValueError('start_step applies to training streams, not to one-pass evaluation.')
  if evaluation and additional_dim is not None:
    raise ValueError('One-pass evaluation streams yield single batches; pass additional_dim=None.')
  if additional_dim is not None and additional_dim < 1:
    raise ArgumentError('additional_dim', '{name}={k} must be >= 1.', k=additional_dim)
  if uniform_dequantization is None:
    uniform_dequantization = spec.uniform_dequantization
  random_flip = bool(spec.random_flip) and not evaluation
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  host_batch = host_batch_size(batch_size, num_devices, process_count)

  # Per-step start, counted in single steps even when k steps are fused per element.
  host_slice = (process_index * host_batch, (process_index + 1) * host_batch)
  if spec.dataset == 'DIGITS':
    steps = _digits_stream(spec, split, seed, start_step, batch_size, host_slice, evaluation,
                           random_flip, bool(uniform_dequantization))
  elif spec.dataset == 'FOLDER':
    steps = _folder_stream(spec, split, seed, start_step, batch_size, host_slice, evaluation,
                           random_flip, bool(uniform_dequantization))
  else:
    steps = _tf_stream(spec, split, seed, start_step, host_batch, evaluation, random_flip,
                       bool(uniform_dequantization), download, process_index, process_count,
                       shuffle_buffer_size)
  if additional_dim is None:
    return steps
  return _group(steps, additional_dim)
