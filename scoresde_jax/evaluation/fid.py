"""Inception activations / statistics for image batches, and the FID command line.

Library:
  compute_activations(batches, variables, preprocessing='pytorch_fid')
      -> {'pool_3': [N, 2048], 'logits': [N, 1008]}
  compute_statistics(batches, variables, path=None, preprocessing='pytorch_fid')
      -> {'mu', 'sigma', 'pool_3', 'logits', 'preprocessing'}
  image_folder_batches(folder, batch_size) -> iterator of uint8 [B, H, W, 3]

Command line (A, B: folders of images, sample `.npz` files (uint8 images under `samples`, as
`--mode sample` writes them, or `arr_0`), or `.npz` statistics / activations files):
  python -m scoresde_jax.evaluation.fid A B [--batch_size 250] [--inception_weights PTH]
      [--cache_dir DIR] [--save_stats OUT.npz] [--kid] [--is_splits 10]
      [--preprocessing {pytorch_fid,tf,clean_fid}]
prints FID, and KID when both sides have raw activations, and the Inception Score of
each side whose logits are known. `--save_stats OUT.npz` with a single folder A writes
its statistics instead (`python -m scoresde_jax.evaluation.fid A --save_stats OUT`).
`--preprocessing` (default pytorch_fid; see `inception.PREPROCESSING`) is how images are
resized and scaled for the network; statistics files record theirs, and two sides made
with different preprocessing are refused (their FID would measure the resize).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Iterable, Iterator

import jax
import numpy as np

from scoresde_jax import parallel
from scoresde_jax.evaluation import inception
from scoresde_jax.evaluation import metrics
from scoresde_jax.evaluation import weights as weights_lib

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def compute_activations(batches: Iterable[Any], variables: Any | None = None, *,
                        mesh=None, max_samples: int | None = None,
                        check_range: bool = True,
                        preprocessing: str = inception.DEFAULT_PREPROCESSING,
                        ) -> dict[str, np.ndarray]:
  """Runs the FID Inception over an iterable of image batches.

  Args:
    batches: iterable of `[B, H, W, 3]` arrays in [0, 255] (uint8 or float), e.g. a
      sampler's outputs mapped to pixels. H and W may differ between batches.
    variables: Inception variables; default `weights.load_inception()` (the real
      weights; raises FileNotFoundError with instructions when absent).
    mesh: a jax Mesh with a 'data' axis; batches are split over it (default: all
      devices). Batches are padded to the size of the first batch so a short last
      batch does not trigger a recompilation.
    max_samples: stop after this many images (the last batch is truncated).
    check_range: validate pixel ranges on the host (see `inception.check_images`).
    preprocessing: one of `inception.PREPROCESSING` ('pytorch_fid', 'tf', 'clean_fid'):
      the resize and scaling of the FID implementation to reproduce.

  Returns:
    `{'pool_3': [N, 2048], 'logits': [N, 1008]}` float32 numpy arrays.
  """
  preprocessing = inception.check_preprocessing(preprocessing)
  if variables is None:
    variables = weights_lib.load_inception()
  mesh = parallel.make_mesh() if mesh is None else mesh
  # Replicate the ~95 MB of variables once, not once per batch.
  variables = jax.device_put(variables, parallel.replicated(mesh))
  pools, logits = [], []
  n = 0
  padded_size = None
  for batch in batches:
    batch = np.asarray(batch)
    inception.check_images(batch, check_range=check_range)
    if max_samples is not None:
      batch = batch[:max_samples - n]
      if batch.shape[0] == 0:
        break
    b = batch.shape[0]
    padded_size = b if padded_size is None else max(padded_size, b)
    if b < padded_size:  # Same shape as before: reuse the compiled program.
      batch = np.concatenate([batch, np.repeat(batch[-1:], padded_size - b, axis=0)])
    out = inception.sharded_features(variables, batch, mesh=mesh, check_range=False,
                                     preprocessing=preprocessing)
    pools.append(out['pool_3'][:b])
    logits.append(out['logits'][:b])
    n += b
    if max_samples is not None and n >= max_samples:
      break
  if not pools:
    raise ValueError('no images: the iterable of batches was empty.')
  return {'pool_3': np.concatenate(pools), 'logits': np.concatenate(logits)}


def compute_statistics(batches: Iterable[Any], variables: Any | None = None,
                       path: str | os.PathLike | None = None, *,
                       preprocessing: str = inception.DEFAULT_PREPROCESSING,
                       **kwargs) -> dict[str, Any]:
  """`compute_activations`, then mu / sigma; saved to `path` (npz) when given.

  Returns `{'mu': [2048] f64, 'sigma': [2048, 2048] f64, 'pool_3': [N, 2048],
  'logits': [N, 1008], 'preprocessing': str}`; the file holds the same keys (readable by
  pytorch-fid and score_sde, see `metrics.save_statistics`).
  """
  acts = compute_activations(batches, variables, preprocessing=preprocessing, **kwargs)
  if path is not None:
    return metrics.save_statistics(path, acts['pool_3'], acts['logits'],
                                   preprocessing=preprocessing)
  mu, sigma = metrics.activation_statistics(acts['pool_3'])
  return {'mu': mu, 'sigma': sigma, **acts, 'preprocessing': preprocessing}


def list_images(folder: str | os.PathLike) -> list[str]:
  """Sorted image files (png/jpg/jpeg/bmp/webp) directly inside `folder`."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'No image folder at {folder!r}.')
  files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f'{folder!r} contains no images ({", ".join(IMAGE_EXTENSIONS)}).')
  return files


def image_folder_batches(folder: str | os.PathLike, batch_size: int = 250) -> Iterator[np.ndarray]:
  """Yields uint8 `[B, H, W, 3]` batches of the images in `folder` (RGB, sorted names).

  Grayscale / palette / RGBA images are converted to RGB (as pytorch-fid does). All
  images of a batch must share one size.
  """
  from PIL import Image  # Only the CLI path needs PIL.

  files = list_images(folder)
  for start in range(0, len(files), batch_size):
    images = []
    for name in files[start:start + batch_size]:
      with Image.open(name) as im:
        images.append(np.asarray(im.convert('RGB'), np.uint8))
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
      raise ValueError(f'images in {folder!r} have different sizes {sorted(sizes)}; resize '
                       'them to one size first.')
    yield np.stack(images)


# Keys under which sample files hold their images: this project's `--mode sample`
# (`samples`), `np.savez(path, images)` (`arr_0`, as guided-diffusion and EDM write them).
SAMPLE_KEYS = ('samples', 'arr_0', 'images')
_STATS_KEYS = ('mu', 'pool_3')


def sample_file_batches(path: str | os.PathLike, batch_size: int = 250) -> Iterator[np.ndarray]:
  """Yields uint8 `[B, H, W, 3]` batches of a sample `.npz` (uint8 `[N, H, W, C]`, C = 1 or 3,
  under one of SAMPLE_KEYS; gray images are repeated to RGB)."""
  path = os.fspath(path)
  with np.load(path, allow_pickle=False) as f:
    keys = [k for k in SAMPLE_KEYS if k in f.files]
    if not keys:
      raise ValueError(f'{path} holds neither images (one of {list(SAMPLE_KEYS)}) nor '
                       f'statistics (mu/sigma or pool_3); its keys: {sorted(f.files)}.')
    images = f[keys[0]]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'{path}: {keys[0]!r} has dtype {images.dtype} and shape {images.shape}; '
                     'expected uint8 images [N, H, W, C] with C = 1 or 3.')
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return (images[start:start + batch_size] for start in range(0, len(images), batch_size))


def load_side(path: str, variables_fn, batch_size: int = 250,
              preprocessing: str = inception.DEFAULT_PREPROCESSING) -> dict[str, Any]:
  """Statistics of one side of the FID command: an image folder, a sample `.npz` (images) or
  a statistics `.npz` (mu/sigma or pool_3). `variables_fn()` gives the Inception variables,
  called only where images have to go through the network, with `preprocessing`; a
  statistics file keeps the preprocessing it records (`metrics.load_statistics`)."""
  if os.path.isdir(path):
    return compute_statistics(image_folder_batches(path, batch_size), variables_fn(),
                              preprocessing=preprocessing)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path!r} does not exist (expected an image folder or .npz).')
  if not path.endswith('.npz'):
    raise ValueError(f'{path!r} is neither a folder of images nor a .npz file.')
  with np.load(path, allow_pickle=False) as f:
    is_stats = any(k in f.files for k in _STATS_KEYS)
  if is_stats:
    return metrics.load_statistics(path)
  return compute_statistics(sample_file_batches(path, batch_size), variables_fn(),
                            preprocessing=preprocessing)


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(
      prog='python -m scoresde_jax.evaluation.fid',
      description='FID (and KID / Inception Score) with the TF 2015-12-05 Inception.')
  parser.add_argument('paths', nargs='+', help='one or two image folders, sample .npz files '
                      '(uint8 images) or statistics .npz files')
  parser.add_argument('--batch_size', type=int, default=250)
  parser.add_argument('--inception_weights', default=None,
                      help=f'pytorch-fid .pth (default ${weights_lib.INCEPTION_WEIGHTS_ENV} or '
                      f'{weights_lib.DEFAULT_CACHE_DIR})')
  parser.add_argument('--cache_dir', default=None, help='where converted weights are cached')
  parser.add_argument('--save_stats', default=None,
                      help='with one folder: write its statistics (.npz) and exit')
  parser.add_argument('--is_splits', type=int, default=10)
  parser.add_argument('--kid_block_size', type=int, default=1024)
  parser.add_argument('--preprocessing', default=inception.DEFAULT_PREPROCESSING,
                      choices=inception.PREPROCESSING,
                      help='resize and scaling of images for Inception: pytorch_fid (bilinear, '
                      'half-pixel centers), tf (the TF graph\'s legacy bilinear), clean_fid (PIL '
                      'bicubic, antialiased); default %(default)s')
  args = parser.parse_args(argv)

  cached = {}

  def variables_fn():
    if 'v' not in cached:
      cached['v'] = weights_lib.load_inception(args.inception_weights, args.cache_dir)
    return cached['v']

  if args.save_stats is not None:
    if len(args.paths) != 1:
      parser.error('--save_stats takes exactly one image folder or sample file')
    path = args.paths[0]
    batches = (image_folder_batches(path, args.batch_size) if os.path.isdir(path)
               else sample_file_batches(path, args.batch_size))
    stats = compute_statistics(batches, variables_fn(), path=args.save_stats,
                               preprocessing=args.preprocessing)
    print(f'Wrote statistics of {stats["pool_3"].shape[0]} images ({args.preprocessing} '
          f'preprocessing) to {args.save_stats}')
    return {}
  if len(args.paths) != 2:
    parser.error('give two paths (image folders or .npz files)')

  a, b = (load_side(p, variables_fn, args.batch_size, args.preprocessing) for p in args.paths)
  metrics.check_same_preprocessing(a, b, *args.paths)
  results = {'fid': metrics.frechet_distance(a['mu'], a['sigma'], b['mu'], b['sigma'])}
  print(f'FID: {results["fid"]:.6f}')
  if 'pool_3' in a and 'pool_3' in b:
    kid, kid_std = metrics.kernel_inception_distance(a['pool_3'], b['pool_3'],
                                                     args.kid_block_size)
    results['kid'] = kid
    print(f'KID: {kid:.6e} (std {kid_std:.2e})')
  for name, side in zip('AB', (a, b)):
    if 'logits' in side and side['logits'].shape[0] >= args.is_splits:
      mean, std = metrics.inception_score(side['logits'], args.is_splits)
      results[f'is_{name}'] = mean
      print(f'Inception Score {name}: {mean:.4f} +- {std:.4f} ({args.is_splits} splits)')
  return results


if __name__ == '__main__':
  try:
    main()
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
