"""FID reference statistics: where `--mode eval` finds them, and `--mode fid_stats` that makes them.

A statistics file (the reference's format, `np.savez`) holds `mu` [2048] and `sigma`
[2048, 2048] of the Inception pool_3 features of a dataset's train split, the raw `pool_3`
activations (for KID) and `logits`, plus `dataset`, `image_size`, `num_images` and
`preprocessing` (eval.inception_preprocessing when it was made; files without it, such as
the reference's, are taken as 'pytorch_fid').
"""
from __future__ import annotations

import io
import logging
import hashlib
import os
import time

import jax
import numpy as np

from scoresde_jax import errors, files, parallel
from scoresde_jax.evaluation import fid as fid_lib
from scoresde_jax.evaluation import inception
from scoresde_jax.evaluation import metrics
from scoresde_jax.evaluation import weights as weights_lib
from scoresde_jax.run import data, images

log = logging.getLogger(__name__)

STATS_DIR_ENV = 'SCORESDE_STATS_DIR'


def rgb(pixels: np.ndarray) -> np.ndarray:
  """uint8 `[B, H, W, C]`, C in {1, 3} -> uint8 RGB `[B, H, W, 3]` (gray repeated)."""
  if pixels.shape[-1] == 1:
    pixels = np.repeat(pixels, 3, axis=-1)
  if pixels.shape[-1] != 3:
    raise ValueError(f'Inception takes gray or RGB images; got {pixels.shape[-1]} channels.')
  return pixels


def local_mesh():
  """Inception runs on each host's own images: a mesh of this host's devices only."""
  return parallel.make_mesh(jax.local_devices())


def load_inception_variables(config, weights_path=None):
  """The Inception weights of `weights_path`, else eval.inception_weights, else the defaults
  of `weights.load_inception`."""
  path = weights_path or config.eval.get('inception_weights', None) or None
  return weights_lib.load_inception(path)


PREPROCESSING_KEY = 'config.eval.inception_preprocessing'


def inception_preprocessing(config) -> str:
  """eval.inception_preprocessing (default 'pytorch_fid'), checked: one of
  `inception.PREPROCESSING`, else a ConfigError naming the key."""
  value = config.eval.get('inception_preprocessing', inception.DEFAULT_PREPROCESSING)
  with errors.config_errors(keys={'preprocessing': PREPROCESSING_KEY}):
    return inception.check_preprocessing(value)


def stats_filename(config) -> str:
  """The reference's statistics file name: cifar10_stats.npz, lsun_<cat>_<size>_stats.npz, ..."""
  dataset = config.data.dataset
  if dataset == 'LSUN':
    return f'lsun_{config.data.category}_{config.data.image_size}_stats.npz'
  if dataset == 'FOLDER':  # one file per folder and size: folders share the stats directory
    digest = hashlib.sha1(os.path.abspath(config.data.path).encode()).hexdigest()[:10]
    return f'folder_{digest}_{config.data.image_size}_stats.npz'
  return f'{dataset.lower()}_stats.npz'


def default_stats_dir() -> str:
  """$SCORESDE_STATS_DIR, else ~/.cache/scoresde_jax/stats."""
  return os.path.expanduser(os.environ.get(STATS_DIR_ENV)
                            or os.path.join(weights_lib.DEFAULT_CACHE_DIR, 'stats'))


def stats_candidates(config, workdir: str | None = None) -> list[str]:
  """Where `evaluate` looks for the reference statistics, in order.

  eval.stats_path when set (and only it); else <name> in WORKDIR, in WORKDIR/.., in
  assets/stats/ (the reference's layout, relative to the working directory) and in
  `default_stats_dir()`, with <name> = `stats_filename(config)`.
  """
  explicit = config.eval.get('stats_path', None)
  if explicit:
    return [os.path.expanduser(str(explicit))]
  name = stats_filename(config)
  out = []
  if workdir is not None:
    workdir = os.path.abspath(workdir)
    out += [os.path.join(workdir, name), os.path.join(os.path.dirname(workdir), name)]
  out += [os.path.abspath(os.path.join('assets', 'stats', name)),
          os.path.join(default_stats_dir(), name)]
  return out


def resolve_stats_path(config, workdir: str | None = None) -> str:
  """The first existing file of `stats_candidates`; StatsNotFoundError saying how to make one."""
  candidates = stats_candidates(config, workdir)
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise errors.StatsNotFoundError(
      f'No FID reference statistics for {config.data.dataset} (looked for '
      f'{", ".join(repr(c) for c in candidates)}). Compute them first with `python main.py '
      f'--mode fid_stats --config <this config> --workdir {os.path.dirname(candidates[0])}`, '
      'or point --config.eval.stats_path at an existing statistics .npz (e.g. the reference\'s '
      f'{stats_filename(config)}).')


def load_stats(config, path: str) -> dict:
  """Reads reference statistics; refuses ones computed at another image size or dataset, or
  with another Inception preprocessing than eval.inception_preprocessing."""
  preprocessing = inception_preprocessing(config)
  stats = metrics.load_statistics(path)
  with np.load(path, allow_pickle=False) as f:
    meta = {k: f[k].item() for k in ('dataset', 'image_size') if k in f.files}
  if 'dataset' in meta and meta['dataset'] != config.data.dataset:
    raise errors.ConfigError(f'{path} holds statistics of {meta["dataset"]}, not of '
                             f'config.data.dataset={config.data.dataset}.')
  if 'image_size' in meta and int(meta['image_size']) != int(config.data.image_size):
    size = meta['image_size']
    raise errors.ConfigError(f'{path} holds statistics of {size}x{size} images, but '
                             f'data.image_size={config.data.image_size}; recompute them with '
                             '--mode fid_stats.')
  made_with = metrics.statistics_preprocessing(stats)
  if made_with != preprocessing:
    raise errors.ConfigError(f'{path} holds statistics made with {made_with!r} Inception '
                             f'preprocessing, but {PREPROCESSING_KEY}={preprocessing!r}; set it '
                             f'to {made_with!r} or recompute the statistics with --mode fid_stats.')
  return stats


def compute_dataset_stats(config, out_path: str | None = None, weights_path: str | None = None,
                          *, inception_variables=None, max_images: int | None = None) -> dict:
  """FID reference statistics of the train split of config.data.dataset.

  Images come from `run.data.get_dataset` in one pass, without flips or dequantization,
  at the model's resolution (data.image_size) as 8-bit pixels (gray images repeated to RGB).
  The file (default: `default_stats_dir()/stats_filename(config)`) holds `mu` [2048] and
  `sigma` [2048, 2048] (float64), the raw `pool_3` [N, 2048] activations (for KID; the
  reference's format) and `logits`, plus `dataset`, `image_size`, `num_images` and
  `preprocessing` (eval.inception_preprocessing, the resize and scaling used).

  Args:
    weights_path: Inception .pth; default eval.inception_weights, then the defaults of
      `weights.load_inception` ($SCORESDE_INCEPTION_WEIGHTS, ~/.cache/scoresde_jax).
    inception_variables: the Inception variables themselves (overrides weights_path).
    max_images: use only the first this many images (quick checks).

  Returns the dict written.
  """
  preprocessing = inception_preprocessing(config)
  if out_path is None:
    out_path = os.path.join(default_stats_dir(), stats_filename(config))
  if inception_variables is None:
    inception_variables = load_inception_variables(config, weights_path)
  stream = data.get_dataset(config, 'train', evaluation=True, uniform_dequantization=False)

  def pixel_batches():
    for batch in stream:
      x = batch['image'][batch['mask']]
      if len(x):
        yield rgb(images.to_uint8(x))

  start = time.time()
  # One call: a short last batch is padded to the others' size, so Inception compiles once.
  acts = fid_lib.compute_activations(pixel_batches(), inception_variables, mesh=local_mesh(),
                                     max_samples=max_images, preprocessing=preprocessing)
  pool_3, logit = acts['pool_3'], acts['logits']
  if jax.process_count() > 1:
    # Each host read its own shard; statistics are over all of them.
    pool_3, logit = parallel.allgather_rows(pool_3), parallel.allgather_rows(logit)
  mu, sigma = metrics.activation_statistics(pool_3)
  stats = {'mu': mu, 'sigma': sigma, 'pool_3': pool_3, 'logits': logit,
           'dataset': np.asarray(config.data.dataset),
           'image_size': np.asarray(int(config.data.image_size)),
           'num_images': np.asarray(pool_3.shape[0]),
           'preprocessing': np.asarray(preprocessing)}
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **stats)  # Uncompressed: read by pytorch-fid / score_sde tools too.
    files.write_atomic(out_path, buffer.getvalue())
    log.info('Wrote Inception statistics of %d %s images (%s preprocessing) to %s (%.1f s).',
             pool_3.shape[0], config.data.dataset, preprocessing, out_path, time.time() - start)
  return stats
