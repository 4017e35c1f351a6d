"""The evaluation runs: `python main.py --mode eval|sample|fid_stats --config CONFIG --workdir DIR`.

`evaluate(config, workdir)` (`--mode eval`) goes over the snapshots n = eval.begin_ckpt ..
eval.end_ckpt of a training run (snapshot n is training step n * training.snapshot_freq, the
reference's numbering) and, with the EMA parameters of each:

  * eval.enable_loss: the training objective on the whole eval split (per-example losses,
    padding masked out), with the same keys for every checkpoint;
  * eval.enable_bpd: bits/dim of the eval.bpd_dataset split ('test' or 'train') through the
    probability-flow ODE, repeated eval.bpd_num_repeats times (default 5 for 'test', 1 for
    'train', as the reference), always on uniformly dequantized data as the reference does:
    x = (u + U[0, 1)) / 256 for 8-bit pixels u, reported as bits/dim of the 8-bit images
    (offset `likelihood.bits_offset(data.centered)`);
  * eval.enable_sampling: for every sampler setting of the sweep (see `get_sweep`),
    eval.num_samples samples in global batches of eval.batch_size sharded over all devices;
    each host saves its shard per round as uint8 `samples_<host>_<round>.npz` and its Inception
    outputs as `statistics_<host>_<round>.npz`; then FID, Inception Score and KID against the
    dataset's reference statistics (`resolve_stats_path`; `--mode fid_stats` computes them).

Files in WORKDIR/EVAL_FOLDER (written atomically: a temporary file, then `os.replace`):

  ckpt_<n>.json                  loss and bits/dim of snapshot n
  ckpt_<n>_<setting>.json        FID / IS / KID / NFE / seconds of one sampler setting
  ckpt_<n>_<setting>/            samples_<host>_<round>.npz, statistics_<host>_<round>.npz
  summary.md, summary.csv        one row per (snapshot, setting), rebuilt from all JSON files

A rerun skips every result whose JSON file exists, and every finished sampling round of an
interrupted setting (round r's random key is fold_in(key, r), so resumed rounds are the same
as uninterrupted ones). Missing snapshots are skipped with a log message.

`sample(config, workdir)` (`--mode sample`) writes a PNG grid and an npz of samples of the
newest (or a given) checkpoint; `compute_dataset_stats(config, path)` (`--mode fid_stats`)
writes the Inception reference statistics (mu, sigma and raw pool_3 activations) of the
train split.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
import time
import zlib
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np

from scoresde_jax import checkpoints, datasets, likelihood, models, parallel, sampling, sde_lib
from scoresde_jax.evaluation import fid as fid_lib
from scoresde_jax.evaluation import inception, metrics
from scoresde_jax.evaluation import weights as weights_lib
from scoresde_jax.run import files, images, setup

log = logging.getLogger(__name__)

STATS_DIR_ENV = 'SCORESDE_STATS_DIR'
SUMMARY_COLUMNS = ('ckpt', 'step', 'setting', 'num_samples', 'nfe', 'fid', 'is', 'kid', 'loss',
                   'bpd', 'seconds')
_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.+=-]*')
# Keys a sampler setting may have, with what they mean (defaults come from config.sampling).
_SETTING_KEYS = ('name', 'method', 'predictor', 'corrector', 'n_steps_each', 'snr',
                 'probability_flow', 'noise_removal', 'num_scales', 'rtol', 'atol', 'ode_method',
                 'fast')


class StatsNotFoundError(FileNotFoundError):
  """No reference statistics for FID: `--mode fid_stats` has to run first."""


# ------------------------------------------------------------------------------------------
# Small utilities


def _finite_or_none(x):
  """JSON has no NaN/Inf: non-finite numbers become null."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def _plain(value):
  """Config values (tuples, ConfigDicts, numpy scalars) -> JSON-serializable Python."""
  if isinstance(value, Mapping) or hasattr(value, 'to_dict'):
    items = value.to_dict().items() if hasattr(value, 'to_dict') else value.items()
    return {str(k): _plain(v) for k, v in items}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _json_ready(d: dict) -> dict:
  return {k: (_finite_or_none(v) if isinstance(v, float) else _plain(v)) for k, v in d.items()}


def _allgather_rows(x: np.ndarray) -> np.ndarray:
  """Concatenates every host's `x: [n_host, ...]` (n_host may differ) in host order."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([len(x)]))).reshape(-1)
  padded = np.zeros((int(counts.max()),) + x.shape[1:], x.dtype)
  padded[:len(x)] = x
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [hosts, max, ...]
  return np.concatenate([gathered[i, :c] for i, c in enumerate(counts)])


def _host_local(x) -> np.ndarray:
  """This host's rows of a global batch `[B, ...]` sharded along axis 0, in order.

  A replicated array is kept whole by host 0 only, so no sample is counted twice.
  """
  if getattr(x, 'is_fully_addressable', True):
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0)) if jax.process_index() == 0 else np.asarray(x)[:0]
  rows = {}
  for shard in x.addressable_shards:
    rows.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
  return np.concatenate([rows[k] for k in sorted(rows)])


def _rgb(pixels: np.ndarray) -> np.ndarray:
  """uint8 `[B, H, W, C]`, C in {1, 3} -> uint8 RGB `[B, H, W, 3]` (gray repeated)."""
  if pixels.shape[-1] == 1:
    pixels = np.repeat(pixels, 3, axis=-1)
  if pixels.shape[-1] != 3:
    raise ValueError(f'Inception takes gray or RGB images; got {pixels.shape[-1]} channels.')
  return pixels


def _local_mesh():
  # Inception runs on each host's own samples: a mesh of this host's devices only.
  return inception.data_mesh(jax.local_devices())


def checkpoint_step(config, ckpt: int) -> int:
  """Training step of evaluation checkpoint index `ckpt` (the reference's numbering)."""
  return int(ckpt) * int(config.training.snapshot_freq)


def snapshot_steps(workdir: str) -> list[int]:
  """Steps of the finished snapshots in WORKDIR/checkpoints (empty when there are none)."""
  directory = os.path.join(os.path.abspath(workdir), checkpoints.SNAPSHOTS)
  if not os.path.isdir(directory):
    return []
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.CheckpointManager(directory,
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    return sorted(int(s) for s in manager.all_steps())


def _check_eval_batch(config, mesh):
  if config.eval.batch_size % mesh.size:
    raise setup.ConfigError(f'eval.batch_size={config.eval.batch_size} is not divisible by the '
                            f'{mesh.size} devices; use a multiple of {mesh.size}.')


def _model_and_template(config):
  """The network and the abstract structure of its TrainState (shapes only: restoring a
  checkpoint needs no freshly initialized parameters, which take long to compute)."""
  model = models.get_model(config)
  template = jax.eval_shape(lambda rng: setup.create_train_state(config, rng)[2],
                            jax.random.PRNGKey(0))
  return model, template


# ------------------------------------------------------------------------------------------
# Sampler settings and sweeps


def _default_setting_name(config) -> str:
  s = config.sampling
  method = s.method.lower()
  if method == 'pc':
    name = f'pc_{s.predictor}_{s.corrector}'
    return name + '_pf' if s.probability_flow else name
  return method


def normalize_setting(config, setting: Mapping[str, Any] | None = None) -> dict:
  """A complete sampler setting: the entries of `setting` over the defaults of config.sampling.

  Keys: name, method ('pc', 'ode', or a fast solver of `fast_solvers`), predictor, corrector,
  n_steps_each, snr, probability_flow, noise_removal, num_scales (steps of the sampler's SDE
  discretization; default model.num_scales; the score network keeps the training SDE), rtol,
  atol, ode_method (ODE), fast (kwargs of the fast solver, e.g. {'steps': 20}).

  Raises:
    ValueError: unknown keys, predictor or corrector names, or a name unfit for a file name.
  """
  s = config.sampling
  setting = dict(_plain(setting) if setting is not None else {})
  unknown = sorted(set(setting) - set(_SETTING_KEYS))
  if unknown:
    raise ValueError(f'Sampler setting {setting.get("name", setting)!r} has unknown keys '
                     f'{unknown}; allowed: {list(_SETTING_KEYS)}.')
  out = {
      'method': s.method,
      'predictor': s.get('predictor', 'none'),
      'corrector': s.get('corrector', 'none'),
      'n_steps_each': s.get('n_steps_each', 1),
      'snr': s.get('snr', 0.16),
      'probability_flow': s.get('probability_flow', False),
      'noise_removal': s.get('noise_removal', True),
      'num_scales': config.model.num_scales,
      'rtol': s.get('rtol', 1e-5),
      'atol': s.get('atol', 1e-5),
      'ode_method': s.get('ode_method', 'dopri5'),
      'fast': _plain(s.get('fast', {})),
  }
  explicit_name = setting.pop('name', None)
  out.update(setting)
  out['method'] = str(out['method']).lower()
  if out['method'] == 'pc':
    # Unknown names fail here, before any checkpoint is loaded.
    sampling.get_predictor(out['predictor'])
    sampling.get_corrector(out['corrector'])
    if out['probability_flow'] and str(out['predictor']).lower() == 'ancestral_sampling':
      raise ValueError(f'Sampler setting {explicit_name!r}: ancestral sampling has no '
                       'probability-flow form.')
  if explicit_name is None:
    if setting:
      raise ValueError(f'Sampler setting {setting} needs a name (e.g. "P1000_reverse_diffusion").')
    explicit_name = _default_setting_name(config)
  name = str(explicit_name)
  if not _NAME_RE.fullmatch(name):
    raise ValueError(f'Sampler setting name {name!r} must be usable as a file name: letters, '
                     'digits and _ . + = - only, starting with a letter or digit.')
  out['name'] = name
  out['num_scales'] = int(out['num_scales'])
  out['n_steps_each'] = int(out['n_steps_each'])
  return out


def paper_table1_sweep(config) -> list[dict]:
  """The sampler comparisons of the paper's Table 1 for the config's SDE.

  With N = model.num_scales (1000 for the paper's models): P<N> and P<2N> (predictor only),
  C<2N> (corrector only, 2N steps of the configured corrector, Langevin by default) and PC<N>
  (one predictor and one corrector step per noise level), for the predictors ancestral
  sampling (not for sub-VP, whose discretization has no ancestral form), reverse diffusion
  and probability flow (the reverse-diffusion discretization of the probability-flow ODE).
  P<2N> and C<2N> discretize the SDE with 2N steps; models trained with N discrete noise
  levels then see the nearest trained level. snr is config.sampling.snr.
  """
  sde, _ = setup.get_sde(config)
  n = int(config.model.num_scales)
  corrector = config.sampling.get('corrector', 'langevin')
  if str(corrector).lower() == 'none':
    corrector = 'langevin'
  predictors = [('ancestral_sampling', 'ancestral_sampling', False),
                ('reverse_diffusion', 'reverse_diffusion', False),
                ('probability_flow', 'reverse_diffusion', True)]
  if isinstance(sde, sde_lib.subVPSDE):
    predictors = predictors[1:]
  sweep = []
  for steps in (n, 2 * n):
    for label, predictor, pf in predictors:
      sweep.append({'name': f'P{steps}_{label}', 'method': 'pc', 'predictor': predictor,
                    'corrector': 'none', 'probability_flow': pf, 'num_scales': steps})
  sweep.append({'name': f'C{2 * n}', 'method': 'pc', 'predictor': 'none',
                'corrector': corrector, 'n_steps_each': 1, 'num_scales': 2 * n})
  for label, predictor, pf in predictors:
    sweep.append({'name': f'PC{n}_{label}', 'method': 'pc', 'predictor': predictor,
                  'corrector': corrector, 'n_steps_each': 1, 'probability_flow': pf,
                  'num_scales': n})
  return sweep


def get_sweep(config) -> list[dict]:
  """The sampler settings to evaluate, normalized (see `normalize_setting`).

  config.eval.sweep, when present, is a list of settings (dicts) or its JSON text, or 'table1' for
  `paper_table1_sweep(config)`; without it (or when None / empty), the single setting of
  config.sampling.
  """
  spec = config.eval.get('sweep', None)
  if isinstance(spec, str) and spec.lstrip().startswith('['):
    try:  # a list given on the command line: --config.eval.sweep='[{"name": ...}]'
      spec = json.loads(spec)
    except json.JSONDecodeError as e:
      raise ValueError(f'eval.sweep is not valid JSON: {e}') from None
  if spec is None or (isinstance(spec, (list, tuple, str)) and not spec):
    return [normalize_setting(config)]
  if isinstance(spec, str):
    if spec.lower() != 'table1':
      raise ValueError(f"eval.sweep={spec!r}: give a list of sampler settings or 'table1'.")
    spec = paper_table1_sweep(config)
  if not isinstance(spec, (list, tuple)):
    raise ValueError(f'eval.sweep must be a list of sampler settings (dicts), got '
                     f'{type(spec).__name__}.')
  sweep = [normalize_setting(config, s) for s in spec]
  names = [s['name'] for s in sweep]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'eval.sweep has duplicate setting names {duplicates}.')
  return sweep


def get_setting_sampler(setting: Mapping[str, Any], sde, eps: float, shape, sharding=None):
  """`sampler(rng, score_fn) -> (samples, nfe)` of a normalized setting.

  The sampler's SDE is `sde` with `num_scales` steps; the score function passed to it keeps
  the conventions of the SDE the model was trained with.
  """
  sampler_sde = sde if setting['num_scales'] == sde.N else dataclasses.replace(
      sde, N=setting['num_scales'])
  method = setting['method']
  if method == 'pc':
    return sampling.get_pc_sampler(
        sampler_sde, shape, setting['predictor'], setting['corrector'], float(setting['snr']),
        setting['n_steps_each'], probability_flow=bool(setting['probability_flow']),
        denoise=bool(setting['noise_removal']), eps=eps, sharding=sharding)
  if method == 'ode':
    return sampling.get_ode_sampler(
        sampler_sde, shape, denoise=bool(setting['noise_removal']), rtol=float(setting['rtol']),
        atol=float(setting['atol']), eps=eps, method=setting['ode_method'], sharding=sharding)
  from scoresde_jax import fast_solvers  # pylint: disable=import-outside-toplevel
  return fast_solvers.get_fast_sampler(method, sampler_sde, shape, **dict(setting['fast'] or {}))


# ------------------------------------------------------------------------------------------
# Dataset reference statistics


def stats_filename(config) -> str:
  """The reference's statistics file name: cifar10_stats.npz, lsun_<cat>_<size>_stats.npz, ..."""
  dataset = config.data.dataset
  if dataset == 'LSUN':
    return f'lsun_{config.data.category}_{config.data.image_size}_stats.npz'
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
  raise StatsNotFoundError(
      f'No FID reference statistics for {config.data.dataset} (looked for '
      f'{", ".join(repr(c) for c in candidates)}). Compute them first with `python main.py '
      f'--mode fid_stats --config <this config> --workdir {os.path.dirname(candidates[0])}`, '
      'or point --config.eval.stats_path at an existing statistics .npz (e.g. the reference\'s '
      f'{stats_filename(config)}).')


def load_stats(config, path: str) -> dict:
  """Reads reference statistics; refuses ones computed at another image size or dataset."""
  stats = metrics.load_statistics(path)
  with np.load(path, allow_pickle=False) as f:
    meta = {k: f[k].item() for k in ('dataset', 'image_size') if k in f.files}
  if 'dataset' in meta and meta['dataset'] != config.data.dataset:
    raise ValueError(f'{path} holds statistics of {meta["dataset"]}, not of '
                     f'config.data.dataset={config.data.dataset}.')
  if 'image_size' in meta and int(meta['image_size']) != int(config.data.image_size):
    raise ValueError(f'{path} holds statistics of {meta["image_size"]}x{meta["image_size"]} '
                     f'images, but data.image_size={config.data.image_size}; recompute them '
                     'with --mode fid_stats.')
  return stats


def _inception_variables(config, weights_path=None):
  path = weights_path or config.eval.get('inception_weights', None) or None
  return weights_lib.load_inception(path)


def compute_dataset_stats(config, out_path: str | None = None, weights_path: str | None = None,
                          *, inception_variables=None, max_images: int | None = None) -> dict:
  """FID reference statistics of the train split of config.data.dataset.

  Images come from `datasets.get_dataset` in one pass, without flips or dequantization,
  at the model's resolution (data.image_size) as 8-bit pixels (gray images repeated to RGB).
  The file (default: `default_stats_dir()/stats_filename(config)`) holds `mu` [2048] and
  `sigma` [2048, 2048] (float64), the raw `pool_3` [N, 2048] activations (for KID; the
  reference's format) and `logits`, plus `dataset`, `image_size`, `num_images`.

  Args:
    weights_path: Inception .pth; default eval.inception_weights, then the defaults of
      `weights.load_inception` ($SCORESDE_INCEPTION_WEIGHTS, ~/.cache/scoresde_jax).
    inception_variables: the Inception variables themselves (overrides weights_path).
    max_images: use only the first this many images (quick checks).

  Returns the dict written.
  """
  if out_path is None:
    out_path = os.path.join(default_stats_dir(), stats_filename(config))
  if inception_variables is None:
    inception_variables = _inception_variables(config, weights_path)
  stream = datasets.get_dataset(config, 'train', evaluation=True, uniform_dequantization=False)

  def pixel_batches():
    for batch in stream:
      x = batch['image'][batch['mask']]
      if len(x):
        yield _rgb(images.to_uint8(x))

  start = time.time()
  # One call: a short last batch is padded to the others' size, so Inception compiles once.
  acts = fid_lib.compute_activations(pixel_batches(), inception_variables, mesh=_local_mesh(),
                                     max_samples=max_images)
  pool_3, logit = acts['pool_3'], acts['logits']
  if jax.process_count() > 1:
    # Each host read its own shard; statistics are over all of them.
    pool_3, logit = _allgather_rows(pool_3), _allgather_rows(logit)
  mu, sigma = metrics.activation_statistics(pool_3)
  stats = {'mu': mu, 'sigma': sigma, 'pool_3': pool_3, 'logits': logit,
           'dataset': np.asarray(config.data.dataset),
           'image_size': np.asarray(int(config.data.image_size)),
           'num_images': np.asarray(pool_3.shape[0])}
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **stats)  # Uncompressed: read by pytorch-fid / score_sde tools too.
    files.write_atomic(out_path, buffer.getvalue())
    log.info('Wrote Inception statistics of %d %s images to %s (%.1f s).', pool_3.shape[0],
             config.data.dataset, out_path, time.time() - start)
  return stats


# ------------------------------------------------------------------------------------------
# Loss and bits/dim


def _eval_batches(config, split: str, seed: int, uniform_dequantization: bool,
                  num_batches: int | None) -> Iterator[dict]:
  stream = datasets.get_dataset(config, split, seed=seed, evaluation=True,
                                uniform_dequantization=uniform_dequantization)
  for i, batch in enumerate(stream):
    if num_batches is not None and i >= num_batches:
      return
    yield batch


def _shard(images_, mask, sharding):
  batch = datasets.shard_batch({'image': images_, 'mask': mask}, sharding)
  return batch['image'], batch['mask']


def eval_loss(config, sde, model, ema_params, mesh, rng, num_batches=None,
              cache: dict | None = None) -> dict:
  """Mean training objective over the eval split at `ema_params`.

  Per-example losses (the objective on a batch of one, vmapped) so that the padding of the
  last batch is masked out exactly. `cache` (a dict kept across checkpoints) holds the
  compiled function, so later checkpoints do not compile again.
  Returns {'loss', 'loss_num_examples'}.
  """
  cache = {} if cache is None else cache
  if 'loss' not in cache:
    loss_fn = setup.get_loss_fn(config, sde, model, train=False)

    @jax.jit
    def per_example(params, x, rng):
      keys = jax.random.split(rng, x.shape[0])
      return jax.vmap(lambda xi, k: loss_fn(params, xi[None], k))(x, keys)

    cache['loss'] = per_example
  per_example = cache['loss']
  scaler = datasets.get_data_scaler(config)
  sharding = parallel.data_sharding(mesh)

  params = jax.device_put(ema_params, parallel.replicated(mesh))
  total, count = 0.0, 0
  for i, batch in enumerate(_eval_batches(config, 'eval', config.seed, None, num_batches)):
    x, mask = _shard(scaler(batch['image']), batch['mask'], sharding)
    losses = parallel.gather(per_example(params, x, jax.random.fold_in(rng, i)))
    mask = parallel.gather(mask)
    total += float(np.sum(losses[mask], dtype=np.float64))
    count += int(mask.sum())
  if not count:
    raise ValueError(f'The eval split of {config.data.dataset} is empty.')
  return {'loss': total / count, 'loss_num_examples': count}


def eval_bpd(config, sde, score_fn, mesh, rng, num_batches=None, cache: dict | None = None) -> dict:
  """Bits/dim of eval.bpd_dataset under the probability-flow ODE (see the module docstring).

  Returns {'bpd' (mean over examples and repeats), 'bpd_std' (std of the per-repeat means),
  'bpd_num_examples', 'bpd_num_repeats', 'bpd_dataset', 'bpd_nfe' (mean per batch)}.
  """
  name = config.eval.get('bpd_dataset', 'test').lower()
  if name not in ('test', 'train', 'eval'):
    raise ValueError(f"eval.bpd_dataset={config.eval.bpd_dataset!r}: use 'test' or 'train'.")
  split = 'train' if name == 'train' else 'eval'
  repeats = int(config.eval.get('bpd_num_repeats', None) or (1 if split == 'train' else 5))
  cache = {} if cache is None else cache
  if 'likelihood' not in cache:  # compiled once for all checkpoints
    cache['likelihood'] = likelihood.get_likelihood_fn(
        sde, rtol=float(config.eval.get('bpd_rtol', 1e-5)),
        atol=float(config.eval.get('bpd_atol', 1e-5)), eps=1e-5,
        hutchinson_type=config.eval.get('hutchinson_type', 'rademacher'),
        bits_offset=likelihood.bits_offset(bool(config.data.centered)))
  likelihood_fn = cache['likelihood']
  scaler = datasets.get_data_scaler(config)
  sharding = parallel.data_sharding(mesh)
  means, nfes, count = [], [], 0
  for repeat in range(repeats):
    bpds = []
    # A new seed per repeat: new dequantization noise (and new probe vectors below).
    for i, batch in enumerate(_eval_batches(config, split, config.seed + repeat, True,
                                            num_batches)):
      x, mask = _shard(scaler(batch['image']), batch['mask'], sharding)
      bpd, _, nfe = likelihood_fn(jax.random.fold_in(jax.random.fold_in(rng, repeat), i),
                                  score_fn, x)
      bpd, mask = parallel.gather(bpd), parallel.gather(mask)
      bpds.append(bpd[mask])
      nfes.append(float(nfe))
      log.info('bpd repeat %d batch %d: %.4f (running mean)', repeat, i,
               float(np.mean(np.concatenate(bpds))))
    bpds = np.concatenate(bpds).astype(np.float64)
    means.append(bpds.mean())
    count += bpds.size
  return {'bpd': float(np.mean(means)), 'bpd_std': float(np.std(means)),
          'bpd_num_examples': count, 'bpd_num_repeats': repeats, 'bpd_dataset': name,
          'bpd_nfe': float(np.mean(nfes))}


# ------------------------------------------------------------------------------------------
# Sampling and sample quality


def fid_to_reference(activations, mu_ref, sigma_ref) -> float:
  """FID between features `[n, d]` (their mean and unbiased covariance) and N(mu_ref, sigma_ref).

  The same number as `metrics.frechet_distance`. With n <= d the sample covariance
  S = Xc^T Xc / (n - 1) (Xc: centered features) has rank < n, and the nonzero eigenvalues of
  sigma_ref S are those of the n x n matrix Xc sigma_ref Xc^T / (n - 1), so tr((sigma_ref S)^(1/2))
  comes from an n x n eigendecomposition instead of two d x d ones (d = 2048: seconds saved
  on every quick evaluation with few samples).
  """
  x = np.asarray(activations, np.float64)
  n, d = x.shape
  if n > d:
    return metrics.frechet_distance(*metrics.activation_statistics(x), mu_ref, sigma_ref)
  if n < 2:
    raise ValueError(f'FID needs at least 2 samples, got {n}.')
  mu_ref = np.asarray(mu_ref, np.float64)
  sigma_ref = np.asarray(sigma_ref, np.float64)
  if mu_ref.shape != (d,) or sigma_ref.shape != (d, d):
    raise ValueError(f'Reference statistics of shapes {mu_ref.shape}, {sigma_ref.shape} do not '
                     f'match {d}-dimensional features.')
  if not all(np.all(np.isfinite(a)) for a in (x, mu_ref, sigma_ref)):
    raise ValueError('FID inputs contain NaN or Inf.')
  mu = x.mean(axis=0)
  xc = x - mu
  m = xc @ sigma_ref @ xc.T / (n - 1)
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  # Round-off-level eigenvalues (the one of the centering direction, at least) are 0.
  w = np.where(w > np.max(np.abs(w), initial=0.0) * n * np.finfo(np.float64).eps, w, 0.0)
  diff = mu - mu_ref
  return float(diff @ diff + np.sum(xc * xc) / (n - 1) + np.trace(sigma_ref)
               - 2.0 * np.sum(np.sqrt(w)))


def _setting_key(rng, ckpt: int, name: str):
  # crc32 of the name: a setting's samples do not depend on its position in the sweep.
  return jax.random.fold_in(jax.random.fold_in(rng, ckpt), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _round_files(directory: str, host: int, r: int) -> tuple[str, str]:
  return (os.path.join(directory, f'samples_{host}_{r}.npz'),
          os.path.join(directory, f'statistics_{host}_{r}.npz'))


def _wait_for(paths: Sequence[str], what: str, timeout: float = 3600.0):
  """Waits for other hosts' files (shared filesystem), as the reference does."""
  start, warned = time.time(), False
  while not all(os.path.exists(p) for p in paths):
    if not warned:
      log.warning('Waiting for %s of the other hosts.', what)
      warned = True
    if time.time() - start > timeout:
      raise TimeoutError(f'{what} of other hosts did not appear within {timeout:.0f} s.')
    time.sleep(5.0)


def sample_quality(config, setting: dict, sde, eps, score_fn, mesh, rng, directory: str,
                   inception_variables, stats: dict, cache: dict | None = None) -> dict:
  """Samples `eval.num_samples` images with `setting` and scores them against `stats`.

  Rounds whose files exist in `directory` are not sampled again. `cache` (a dict kept across
  checkpoints) holds the compiled samplers by setting name. Returns the metrics
  ('fid', 'is', 'is_std', 'kid', 'kid_std', 'nfe', ...) on host 0 and {} elsewhere.
  """
  cache = {} if cache is None else cache
  num_samples, batch_size = int(config.eval.num_samples), int(config.eval.batch_size)
  num_rounds = math.ceil(num_samples / batch_size)
  host, num_hosts = jax.process_index(), jax.process_count()
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  os.makedirs(directory, exist_ok=True)
  nfes, sampling_seconds, inception_seconds = [], 0.0, 0.0
  local_mesh = _local_mesh()
  # Replicated once here rather than once per round.
  inception_variables = jax.device_put(inception_variables, jax.sharding.NamedSharding(
      local_mesh, jax.sharding.PartitionSpec()))
  # Inception's activations of a batch are ~3 MB per 299x299 image: bounded chunks.
  inception_batch = int(config.eval.get('inception_batch_size', 500))
  for r in range(num_rounds):
    if all(os.path.exists(_round_files(directory, h, r)[1]) for h in range(num_hosts)):
      with np.load(_round_files(directory, host, r)[1]) as f:
        if 'nfe' in f.files:
          nfes.append(float(f['nfe']))
      continue
    key = ('sampler', setting['name'])
    if key not in cache:  # Built (and compiled) only when some round is left to do.
      cache[key] = get_setting_sampler(setting, sde, eps, shape, parallel.data_sharding(mesh))
    sampler = cache[key]
    start = time.time()
    samples, nfe = sampler(jax.random.fold_in(rng, r), score_fn)
    samples = _host_local(samples)  # blocks until the round is done
    round_sampling = time.time() - start
    pixels = images.to_uint8(inverse_scaler(samples))
    samples_file, stats_file = _round_files(directory, host, r)
    files.write_npz(samples_file, samples=pixels)
    start = time.time()
    if len(pixels):
      chunks = [_rgb(pixels[i:i + inception_batch]) for i in range(0, len(pixels), inception_batch)]
      acts = fid_lib.compute_activations(chunks, inception_variables, mesh=local_mesh)
    else:  # a replicated batch lives on host 0 only
      acts = {'pool_3': np.zeros((0, 2048), np.float32), 'logits': np.zeros((0, 1008), np.float32)}
    round_inception = time.time() - start
    sampling_seconds += round_sampling
    inception_seconds += round_inception
    nfes.append(float(nfe))
    files.write_npz(stats_file, pool_3=acts['pool_3'], logits=acts['logits'], nfe=np.float64(nfe))
    log.info('%s round %d/%d: %d samples, NFE %.0f, sampling %.1f s, Inception %.1f s',
             setting['name'], r + 1, num_rounds, len(pixels), float(nfe), round_sampling,
             round_inception)
  if host != 0:
    return {}
  _wait_for([_round_files(directory, h, r)[1] for h in range(num_hosts)
             for r in range(num_rounds)], 'sample statistics')
  pools, logits = [], []
  for r in range(num_rounds):
    for h in range(num_hosts):
      with np.load(_round_files(directory, h, r)[1]) as f:
        pools.append(f['pool_3'])
        logits.append(f['logits'])
  pools = np.concatenate(pools)[:num_samples]
  logits = np.concatenate(logits)[:num_samples]
  result = {'num_samples': int(pools.shape[0]),
            'fid': fid_to_reference(pools, stats['mu'], stats['sigma']),
            'nfe': float(np.mean(nfes)) if nfes else None,
            'sampling_seconds': sampling_seconds, 'inception_seconds': inception_seconds}
  splits = int(config.eval.get('is_splits', 10))
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
      result['kid'], result['kid_std'] = metrics.kernel_inception_distance(stats['pool_3'], pools)
    except ValueError as e:  # too few samples per KID block
      log.warning('KID not computed: %s', e)
  else:
    log.warning('The statistics file has no raw pool_3 activations: KID not computed.')
  return result


# ------------------------------------------------------------------------------------------
# The evaluation run


def _setting_json(eval_dir, ckpt, name):
  return os.path.join(eval_dir, f'ckpt_{ckpt}_{name}.json')


def _ckpt_json(eval_dir, ckpt):
  return os.path.join(eval_dir, f'ckpt_{ckpt}.json')


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def evaluate(config, workdir: str, eval_folder: str = 'eval', *, inception_variables=None,
             stats_path: str | None = None) -> list[dict]:
  """Evaluates snapshots eval.begin_ckpt .. eval.end_ckpt of the run in `workdir`.

  See the module docstring for what is computed and written. `inception_variables` and
  `stats_path` override eval.inception_weights / the statistics lookup (tests, notebooks).
  Returns the per-(checkpoint, setting) result dicts of this call, skipped ones included.

  Raises:
    checkpoints.CheckpointError: none of the requested snapshots exists.
    StatsNotFoundError: sampling is enabled but no reference statistics are found.
    FileNotFoundError: sampling is enabled but the Inception weights are missing.
  """
  e = config.eval
  eval_dir = os.path.join(workdir, eval_folder)
  mesh = parallel.make_mesh()
  sweep = get_sweep(config) if e.enable_sampling else []
  if e.enable_sampling:
    _check_eval_batch(config, mesh)
    if int(e.num_samples) < 2:
      raise setup.ConfigError(f'eval.num_samples={e.num_samples}: FID needs at least 2 samples.')

  begin, end = int(e.begin_ckpt), int(e.end_ckpt)
  available = set(snapshot_steps(workdir))
  wanted = [(n, checkpoint_step(config, n)) for n in range(begin, end + 1)]
  present = [(n, s) for n, s in wanted if s in available]
  if not present:
    raise checkpoints.CheckpointError(
        f'No snapshots for eval.begin_ckpt..eval.end_ckpt = {begin}..{end} (training steps '
        f'{wanted[0][1] if wanted else "-"}..{wanted[-1][1] if wanted else "-"} with '
        f'training.snapshot_freq={config.training.snapshot_freq}) in '
        f'{os.path.join(workdir, checkpoints.SNAPSHOTS)}; snapshots exist at steps '
        f'{sorted(available) or "none"}.')
  for n, s in wanted:
    if s not in available:
      log.warning('Snapshot %d (step %d) does not exist; skipped.', n, s)

  def todo(n):
    ckpt_file = _read_json(_ckpt_json(eval_dir, n)) or {}
    need_loss = bool(e.enable_loss) and 'loss' not in ckpt_file
    need_bpd = bool(e.enable_bpd) and 'bpd' not in ckpt_file
    settings = [s for s in sweep if not os.path.exists(_setting_json(eval_dir, n, s['name']))]
    return need_loss, need_bpd, settings

  pending = {n: todo(n) for n, _ in present}
  stats = None
  if any(p[2] for p in pending.values()):
    # Fail before hours of sampling, not after.
    path = stats_path or resolve_stats_path(config, workdir)
    stats = load_stats(config, path)
    stats_path = path
    if inception_variables is None:
      inception_variables = _inception_variables(config)
  os.makedirs(eval_dir, exist_ok=True)

  sde, eps = setup.get_sde(config)
  model, template = _model_and_template(config)
  base_rng = jax.random.PRNGKey(config.seed + 1)
  cache = {}  # compiled loss, likelihood and samplers, reused by every checkpoint
  results = []
  for n, step in present:
    need_loss, need_bpd, settings = pending[n]
    ckpt_rng = jax.random.fold_in(base_rng, n)
    if need_loss or need_bpd or settings:
      state = checkpoints.restore_snapshot(workdir, template, step)
      ema_params = jax.device_put(state.ema_params, parallel.replicated(mesh))
      score_fn = setup.get_score_fn(config, sde, model, ema_params)
      log.info('Snapshot %d (step %d): loss %s, bpd %s, %d sampler setting(s) to do.', n, step,
               need_loss, need_bpd, len(settings))
    else:
      log.info('Snapshot %d (step %d): everything done already; skipped.', n, step)
    ckpt_result = _read_json(_ckpt_json(eval_dir, n)) or {'ckpt': n, 'step': step}
    if need_loss:
      start = time.time()
      ckpt_result.update(eval_loss(config, sde, model, ema_params, mesh,
                                   jax.random.fold_in(ckpt_rng, 0),
                                   e.get('loss_num_batches', None), cache))
      ckpt_result['loss_seconds'] = time.time() - start
      log.info('Snapshot %d: eval loss %.5f', n, ckpt_result['loss'])
    if need_bpd:
      start = time.time()
      ckpt_result.update(eval_bpd(config, sde, score_fn, mesh, jax.random.fold_in(ckpt_rng, 1),
                                  e.get('bpd_num_batches', None), cache))
      ckpt_result['bpd_seconds'] = time.time() - start
      log.info('Snapshot %d: %.4f bits/dim', n, ckpt_result['bpd'])
    if (need_loss or need_bpd) and jax.process_index() == 0:
      files.write_json(_ckpt_json(eval_dir, n), _json_ready(ckpt_result))

    for setting in sweep:
      path = _setting_json(eval_dir, n, setting['name'])
      if setting not in settings:
        log.info('Snapshot %d, %s: done already (%s); skipped.', n, setting['name'], path)
        results.append(_read_json(path))
        continue
      start = time.time()
      quality = sample_quality(
          config, setting, sde, eps, score_fn, mesh, _setting_key(base_rng, n, setting['name']),
          os.path.join(eval_dir, f'ckpt_{n}_{setting["name"]}'), inception_variables, stats,
          cache)
      if jax.process_index() != 0:
        _wait_for([path], 'the metrics written by host 0')
        results.append(_read_json(path))
        continue
      result = {'ckpt': n, 'step': step, 'setting': setting['name'], 'sampler': setting,
                'stats_path': os.path.abspath(stats_path), 'num_devices': mesh.size,
                'device': jax.devices()[0].device_kind, 'wall_seconds': time.time() - start,
                **quality}
      for key in ('loss', 'bpd'):
        if key in ckpt_result:
          result[key] = ckpt_result[key]
      result = _json_ready(result)
      files.write_json(path, result)
      log.info('Snapshot %d, %s: FID %s, IS %s, KID %s, NFE %s', n, setting['name'],
               *(_format(result[k], k) for k in ('fid', 'is', 'kid', 'nfe')))
      results.append(result)
    if not sweep:
      results.append(ckpt_result)
  if jax.process_index() == 0:
    write_summary(eval_dir)
  return results


def collect_results(eval_dir: str) -> list[dict]:
  """One row per (snapshot, setting) from the JSON files of `eval_dir`, sorted by snapshot.

  Loss and bits/dim of ckpt_<n>.json are merged into the rows of snapshot n; a snapshot with
  no sampler results gets one row with an empty setting.
  """
  per_ckpt, per_setting = {}, []
  for name in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []:
    if not (name.startswith('ckpt_') and name.endswith('.json')):
      continue
    data = _read_json(os.path.join(eval_dir, name))
    if not isinstance(data, dict) or 'ckpt' not in data:
      continue
    if 'setting' in data:
      per_setting.append(data)
    else:
      per_ckpt[data['ckpt']] = data
  rows = []
  for data in per_setting:
    row = dict(data)
    for key in ('loss', 'bpd'):
      if row.get(key) is None and key in per_ckpt.get(data['ckpt'], {}):
        row[key] = per_ckpt[data['ckpt']][key]
    row['seconds'] = data.get('wall_seconds')
    rows.append(row)
  with_settings = {r['ckpt'] for r in rows}
  for n, data in per_ckpt.items():
    if n not in with_settings:
      row = dict(data, setting='')
      row['seconds'] = (data.get('loss_seconds') or 0.0) + (data.get('bpd_seconds') or 0.0)
      rows.append(row)
  rows.sort(key=lambda r: (r['ckpt'], r['setting']))
  return rows


def _format(value, column):
  if value is None:
    return ''
  if isinstance(value, float):
    if column == 'kid':
      return f'{value:.3e}'
    if column in ('seconds', 'nfe'):
      return f'{value:.1f}'
    return f'{value:.4f}'
  return str(value)


def write_summary(eval_dir: str) -> tuple[str, str]:
  """Regenerates summary.md and summary.csv from the JSON files of `eval_dir`."""
  rows = collect_results(eval_dir)
  csv_buffer = io.StringIO()
  writer = csv.writer(csv_buffer)
  writer.writerow(SUMMARY_COLUMNS)
  for row in rows:
    writer.writerow(['' if row.get(c) is None else row.get(c) for c in SUMMARY_COLUMNS])
  lines = ['| ' + ' | '.join(SUMMARY_COLUMNS) + ' |',
           '|' + '|'.join('---' for _ in SUMMARY_COLUMNS) + '|']
  for row in rows:
    lines.append('| ' + ' | '.join(_format(row.get(c), c) for c in SUMMARY_COLUMNS) + ' |')
  md_path, csv_path = os.path.join(eval_dir, 'summary.md'), os.path.join(eval_dir, 'summary.csv')
  files.write_atomic(md_path, ('\n'.join(lines) + '\n').encode())
  files.write_atomic(csv_path, csv_buffer.getvalue().encode())
  return md_path, csv_path


# ------------------------------------------------------------------------------------------
# --mode sample


def sample(config, workdir: str, eval_folder: str = 'eval', ckpt: int | None = None,
           num_samples: int = 64, seed: int | None = None) -> dict:
  """Samples with config.sampling from snapshot `ckpt` (or the newest checkpoint).

  Writes WORKDIR/EVAL_FOLDER/samples_step_<step>.png (a grid) and .npz (uint8 `samples`
  [num_samples, H, W, C]). Batches of eval.batch_size (at most), rounded up to a multiple of
  the device count. Returns {'step', 'png', 'npz', 'nfe'}.
  """
  mesh = parallel.make_mesh()
  if num_samples < 1:
    raise ValueError(f'num_samples={num_samples} must be positive.')
  sde, eps = setup.get_sde(config)
  model, template = _model_and_template(config)
  if ckpt is not None:
    step = checkpoint_step(config, ckpt)
    state = checkpoints.restore_snapshot(workdir, template, step)
  else:
    dirs = [os.path.join(workdir, d) for d in (checkpoints.SNAPSHOTS, checkpoints.PREEMPTION)]
    if not any(os.path.isdir(d) for d in dirs):
      raise checkpoints.CheckpointError(f'{workdir!r} holds no checkpoints (no {dirs[0]} or '
                                        f'{dirs[1]}); train first with --mode train.')
    manager = checkpoints.RunCheckpoints(workdir, asynchronous=False)
    try:
      state = manager.restore(template)
    finally:
      manager.close()
    step = int(state.step)
  batch = min(int(config.eval.batch_size), num_samples)
  batch = -(-batch // mesh.size) * mesh.size
  shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler = get_setting_sampler(normalize_setting(config), sde, eps, shape,
                                parallel.data_sharding(mesh))
  ema_params = jax.device_put(state.ema_params, parallel.replicated(mesh))
  score_fn = setup.get_score_fn(config, sde, model, ema_params)
  rng = jax.random.PRNGKey(config.seed + 2 if seed is None else seed)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  out, nfe = [], None
  for r in range(math.ceil(num_samples / batch)):
    samples, nfe = sampler(jax.random.fold_in(rng, r), score_fn)
    out.append(parallel.gather(samples))
  samples = np.clip(inverse_scaler(np.concatenate(out)[:num_samples]), 0.0, 1.0)
  eval_dir = os.path.join(workdir, eval_folder)
  png = os.path.join(eval_dir, f'samples_step_{step}.png')
  npz = os.path.join(eval_dir, f'samples_step_{step}.npz')
  if jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    images.save_grid(samples, png, nrow=int(math.ceil(math.sqrt(num_samples))),
                     scale=max(1, 128 // int(config.data.image_size)))
    files.write_npz(npz, samples=images.to_uint8(samples))
    log.info('Wrote %d samples of step %d to %s and %s.', num_samples, step, png, npz)
  return {'step': step, 'png': png, 'npz': npz, 'nfe': float(nfe)}
