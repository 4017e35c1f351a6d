"""Sample quality of one sampler setting at one checkpoint: samples -> Inception -> FID/IS/KID.

`eval.num_samples` samples are drawn in rounds of `eval.batch_size` (a global batch sharded
over all devices); each host saves its shard of round r as uint8
`samples_<host>_<r>.npz` and its Inception outputs as `statistics_<host>_<r>.npz` in the
setting's directory (with the eval.inception_preprocessing they were made with). A rerun
skips every finished round (round r's key is fold_in(key, r), so resumed rounds are the same
as uninterrupted ones); rounds of another preprocessing are refused, not mixed in. Host 0
then reads every host's statistics (a shared file system, as the reference assumes) and
computes the metrics.
"""
from __future__ import annotations

import logging
import math
import os
import time
import zlib

import jax
import numpy as np

from scoresde_jax import errors, files, parallel
from scoresde_jax.evaluation import fid as fid_lib
from scoresde_jax.evaluation import metrics
from scoresde_jax.run import data, images, results, setup, stats as stats_lib, sweeps

log = logging.getLogger(__name__)


def setting_key(rng, ckpt: int, name: str):
  """The key of a setting's samples at snapshot `ckpt`.

  crc32 of the name: a setting's samples do not depend on its position in the sweep.
  """
  return jax.random.fold_in(jax.random.fold_in(rng, ckpt), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _round_files(directory: str, host: int, r: int) -> tuple[str, str]:
  return (os.path.join(directory, f'samples_{host}_{r}.npz'),
          os.path.join(directory, f'statistics_{host}_{r}.npz'))


def _check_round_preprocessing(path: str, f, preprocessing: str) -> None:
  """A round's Inception outputs `f` (an open npz) must be of `preprocessing`; files from
  before rounds recorded it are 'pytorch_fid'."""
  made_with = (str(f['preprocessing']) if 'preprocessing' in f.files
               else metrics.UNRECORDED_PREPROCESSING)
  if made_with != preprocessing:
    raise errors.ConfigError(
        f'{path} holds Inception outputs made with {made_with!r} preprocessing, but '
        f'{stats_lib.PREPROCESSING_KEY}={preprocessing!r}; evaluate into another eval folder '
        f'or delete {os.path.dirname(path)}.')


class SampleQuality:
  """Scores sampler settings against reference statistics; one object per evaluation run.

  It keeps what it builds (the samplers of each setting, compiled on first use, and the
  replicated Inception weights), so later checkpoints reuse them.
  """

  def __init__(self, config, mesh, inception_variables, stats: dict):
    self._config, self._mesh, self._stats = config, mesh, stats
    self._preprocessing = stats_lib.inception_preprocessing(config)
    self._local_mesh = stats_lib.local_mesh()
    # Replicated once here rather than once per round.
    self._inception = jax.device_put(inception_variables, parallel.replicated(self._local_mesh))
    self._samplers = {}

  def sampler(self, setting):
    """The sampler of a normalized setting (`sweeps.normalize_setting`), built once."""
    name = setting['name']
    if name not in self._samplers:  # built (and compiled) only when some round is left to do
      c = self._config
      shape = (int(c.eval.batch_size), c.data.image_size, c.data.image_size,
               c.data.num_channels)
      self._samplers[name] = setup.get_sampler(
          c, shape, parallel.data_sharding(self._mesh), sweeps.setting_overrides(setting),
          where=sweeps.WHERE)
    return self._samplers[name]

  def __call__(self, setting: dict, score_fn, rng, directory: str) -> dict:
    """Samples `eval.num_samples` images with `setting` and scores them.

    Returns the metrics ('fid', 'is', 'is_std', 'kid', 'kid_std', 'nfe', ...) on host 0
    and {} elsewhere.
    """
    num_samples = int(self._config.eval.num_samples)
    num_rounds = math.ceil(num_samples / int(self._config.eval.batch_size))
    os.makedirs(directory, exist_ok=True)
    result = self._sample(setting, score_fn, rng, directory, num_rounds)
    if jax.process_index() != 0:
      return {}
    num_hosts = jax.process_count()
    stats_files = [_round_files(directory, h, r)[1] for r in range(num_rounds)
                   for h in range(num_hosts)]
    results.wait_for(stats_files, 'sample statistics')
    pools, logits = [], []
    for path in stats_files:
      with np.load(path) as f:
        _check_round_preprocessing(path, f, self._preprocessing)
        pools.append(f['pool_3'])
        logits.append(f['logits'])
    result.update(self._metrics(np.concatenate(pools)[:num_samples],
                                np.concatenate(logits)[:num_samples]))
    return result

  def _sample(self, setting, score_fn, rng, directory, num_rounds) -> dict:
    """This host's rounds not done yet: samples and their Inception outputs, to files."""
    config = self._config
    host, num_hosts = jax.process_index(), jax.process_count()
    inverse_scaler = data.get_data_inverse_scaler(config)
    # Inception's activations of a batch are ~3 MB per 299x299 image: bounded chunks.
    chunk = int(config.eval.get('inception_batch_size', 500))
    nfes, sampling_seconds, inception_seconds = [], 0.0, 0.0
    for r in range(num_rounds):
      samples_file, stats_file = _round_files(directory, host, r)
      if all(os.path.exists(_round_files(directory, h, r)[1]) for h in range(num_hosts)):
        with np.load(stats_file) as f:
          _check_round_preprocessing(stats_file, f, self._preprocessing)
          if 'nfe' in f.files:
            nfes.append(float(f['nfe']))
        continue
      sampler = self.sampler(setting)
      start = time.time()
      samples, nfe = sampler(jax.random.fold_in(rng, r), score_fn)
      samples = parallel.host_local(samples)  # blocks until the round is done
      round_sampling = time.time() - start
      pixels = images.to_uint8(inverse_scaler(samples))
      files.write_npz(samples_file, samples=pixels)
      start = time.time()
      if len(pixels):
        chunks = [stats_lib.rgb(pixels[i:i + chunk]) for i in range(0, len(pixels), chunk)]
        acts = fid_lib.compute_activations(chunks, self._inception, mesh=self._local_mesh,
                                           preprocessing=self._preprocessing)
      else:  # a replicated batch lives on host 0 only
        acts = {'pool_3': np.zeros((0, 2048), np.float32),
                'logits': np.zeros((0, 1008), np.float32)}
      round_inception = time.time() - start
      sampling_seconds += round_sampling
      inception_seconds += round_inception
      nfes.append(float(nfe))
      files.write_npz(stats_file, pool_3=acts['pool_3'], logits=acts['logits'],
                      nfe=np.float64(nfe), preprocessing=np.asarray(self._preprocessing))
      log.info('%s round %d/%d: %d samples, NFE %.0f, sampling %.1f s, Inception %.1f s',
               setting['name'], r + 1, num_rounds, len(pixels), float(nfe), round_sampling,
               round_inception)
    return {'nfe': float(np.mean(nfes)) if nfes else None,
            'sampling_seconds': sampling_seconds, 'inception_seconds': inception_seconds}

  def _metrics(self, pools, logits) -> dict:
    """FID, Inception Score and KID of the samples' features against the reference."""
    stats = self._stats
    result = {'num_samples': int(pools.shape[0]),
              'fid': metrics.fid_to_reference(pools, stats['mu'], stats['sigma']),
              'inception_preprocessing': self._preprocessing}
    splits = int(self._config.eval.get('is_splits', 10))
    if pools.shape[0] // splits < 2:
      # Splits of one sample always score exactly 1; fall back to a single split.
      log.warning('%d samples are too few for %d Inception Score splits; using one.',
                  pools.shape[0], splits)
      splits = 1
    result['is'], result['is_std'] = metrics.inception_score(logits, splits)
    result['is_splits'] = splits
    result['kid'] = result['kid_std'] = None
    if 'pool_3' in stats:
      try:
        # The reference's argument order (data first); the estimate is symmetric anyway.
        result['kid'], result['kid_std'] = metrics.kernel_inception_distance(stats['pool_3'],
                                                                             pools)
      except ValueError as e:  # too few samples per KID block
        log.warning('KID not computed: %s', e)
    else:
      log.warning('The statistics file has no raw pool_3 activations: KID not computed.')
    return result
