"""The evaluation run: `python main.py --mode eval --config CONFIG --workdir DIR`.

`evaluate(config, workdir)` goes over the snapshots n = eval.begin_ckpt .. eval.end_ckpt of a
training run (snapshot n is training step n * training.snapshot_freq, the reference's
numbering) and, with the EMA parameters of each:

  * eval.enable_loss: the training objective on the whole eval split (`eval_likelihood`);
  * eval.enable_bpd: bits/dim through the probability-flow ODE (`eval_likelihood`);
  * eval.enable_sampling: for every sampler setting of the sweep (`sweeps`),
    eval.num_samples samples scored by FID, Inception Score and KID against the dataset's
    reference statistics (`sample_quality`, `stats`; `--mode fid_stats` computes them).

Results go to WORKDIR/EVAL_FOLDER (`results`): a rerun skips every result whose JSON file
exists, and every finished sampling round of an interrupted setting. Missing snapshots are
skipped with a log message.
"""
from __future__ import annotations

import logging
import os
import time

import jax

from scoresde_jax import checkpoints, errors, files, parallel
from scoresde_jax.run import eval_likelihood, results, sample_quality, setup, stats, sweeps

log = logging.getLogger(__name__)


def checkpoint_step(config, ckpt: int) -> int:
  """Training step of evaluation checkpoint index `ckpt` (the reference's numbering)."""
  return int(ckpt) * int(config.training.snapshot_freq)


def check_eval_batch(config, mesh):
  if config.eval.batch_size % mesh.size:
    raise errors.ConfigError(f'eval.batch_size={config.eval.batch_size} is not divisible by '
                             f'the {mesh.size} devices; use a multiple of {mesh.size}.')


def _snapshots(config, workdir: str) -> list[tuple[int, int]]:
  """(n, step) of the snapshots eval.begin_ckpt .. eval.end_ckpt that exist."""
  e = config.eval
  begin, end = int(e.begin_ckpt), int(e.end_ckpt)
  available = set(checkpoints.snapshot_steps(workdir))
  wanted = [(n, checkpoint_step(config, n)) for n in range(begin, end + 1)]
  present = [(n, s) for n, s in wanted if s in available]
  if not present:
    raise errors.CheckpointError(
        f'No snapshots for eval.begin_ckpt..eval.end_ckpt = {begin}..{end} (training steps '
        f'{wanted[0][1] if wanted else "-"}..{wanted[-1][1] if wanted else "-"} with '
        f'training.snapshot_freq={config.training.snapshot_freq}) in '
        f'{os.path.join(workdir, checkpoints.SNAPSHOTS)}; snapshots exist at steps '
        f'{sorted(available) or "none"}.')
  for n, s in wanted:
    if s not in available:
      log.warning('Snapshot %d (step %d) does not exist; skipped.', n, s)
  return present


def evaluate(config, workdir: str, eval_folder: str = 'eval', *, inception_variables=None,
             stats_path: str | None = None) -> list[dict]:
  """Evaluates snapshots eval.begin_ckpt .. eval.end_ckpt of the run in `workdir`.

  See the module docstring for what is computed and written. `inception_variables` and
  `stats_path` override eval.inception_weights / the statistics lookup (tests, notebooks).
  Returns the per-(checkpoint, setting) result dicts of this call, skipped ones included.

  Raises:
    errors.CheckpointError: none of the requested snapshots exists.
    errors.StatsNotFoundError: sampling is enabled but no reference statistics are found.
    errors.WeightsError: sampling is enabled but the Inception weights are missing.
  """
  e = config.eval
  eval_dir = os.path.join(workdir, eval_folder)
  mesh = parallel.make_mesh()
  sweep = sweeps.get_sweep(config) if e.enable_sampling else []
  if e.enable_sampling:
    check_eval_batch(config, mesh)
    if int(e.num_samples) < 2:
      raise errors.ConfigError(f'eval.num_samples={e.num_samples}: FID needs at least 2 samples.')
  present = _snapshots(config, workdir)

  def todo(n):
    done = results.read_json(results.ckpt_json(eval_dir, n)) or {}
    settings = [s for s in sweep
                if not os.path.exists(results.setting_json(eval_dir, n, s['name']))]
    return (bool(e.enable_loss) and 'loss' not in done, bool(e.enable_bpd) and 'bpd' not in done,
            settings)

  pending = {n: todo(n) for n, _ in present}
  quality = None
  if any(p[2] for p in pending.values()):
    # Fail before hours of sampling, not after.
    stats_path = stats_path or stats.resolve_stats_path(config, workdir)
    if inception_variables is None:
      inception_variables = stats.load_inception_variables(config)
    quality = sample_quality.SampleQuality(config, mesh, inception_variables,
                                           stats.load_stats(config, stats_path))
  os.makedirs(eval_dir, exist_ok=True)

  sde = setup.get_sde(config)
  model, template = setup.model_and_template(config)
  # Built once: their compiled functions serve every checkpoint.
  loss_eval = eval_likelihood.LossEval(config, sde, model, mesh, e.get('loss_num_batches', None)) \
      if e.enable_loss else None
  bpd_eval = eval_likelihood.BpdEval(config, sde, mesh, e.get('bpd_num_batches', None)) \
      if e.enable_bpd else None
  base_rng = jax.random.PRNGKey(config.seed + 1)
  out = []
  for n, step in present:
    need_loss, need_bpd, settings = pending[n]
    if not (need_loss or need_bpd or settings):
      log.info('Snapshot %d (step %d): everything done already; skipped.', n, step)
      ckpt_result = results.read_json(results.ckpt_json(eval_dir, n)) or {'ckpt': n, 'step': step}
      out += ([results.read_json(results.setting_json(eval_dir, n, s['name'])) for s in sweep]
              or [ckpt_result])
      continue
    log.info('Snapshot %d (step %d): loss %s, bpd %s, %d sampler setting(s) to do.', n, step,
             need_loss, need_bpd, len(settings))
    state = checkpoints.restore_snapshot(workdir, template, step)
    ema_params = jax.device_put(state.ema_params, parallel.replicated(mesh))
    score_fns = {}  # by guidance scale; one network either way
    ckpt_rng = jax.random.fold_in(base_rng, n)
    ckpt_result = results.read_json(results.ckpt_json(eval_dir, n)) or {'ckpt': n, 'step': step}
    if need_loss:
      start = time.time()
      ckpt_result.update(loss_eval(ema_params, jax.random.fold_in(ckpt_rng, 0)))
      ckpt_result['loss_seconds'] = time.time() - start
      log.info('Snapshot %d: eval loss %.5f', n, ckpt_result['loss'])
    if need_bpd:
      start = time.time()
      # A class-conditional model's null class: bits/dim of p(x), not of guided samples.
      ckpt_result.update(bpd_eval(setup.get_score_fn(config, sde, model, ema_params,
                                                     unconditional=True),
                                  jax.random.fold_in(ckpt_rng, 1)))
      ckpt_result['bpd_seconds'] = time.time() - start
      log.info('Snapshot %d: %.4f bits/dim', n, ckpt_result['bpd'])
    if (need_loss or need_bpd) and jax.process_index() == 0:
      files.write_json(results.ckpt_json(eval_dir, n), results.json_ready(ckpt_result))
    for setting in sweep:
      path = results.setting_json(eval_dir, n, setting['name'])
      if setting not in settings:
        log.info('Snapshot %d, %s: done already (%s); skipped.', n, setting['name'], path)
        out.append(results.read_json(path))
        continue
      start = time.time()
      scale = sweeps.setting_guidance_scale(setting)
      if scale not in score_fns:
        score_fns[scale] = setup.get_score_fn(config, sde, model, ema_params,
                                              guidance_scale=scale)
      metrics = quality(setting, score_fns[scale],
                        sample_quality.setting_key(base_rng, n, setting['name']),
                        os.path.join(eval_dir, f'ckpt_{n}_{setting["name"]}'))
      if jax.process_index() != 0:
        results.wait_for([path], 'the metrics written by host 0')
        out.append(results.read_json(path))
        continue
      result = {'ckpt': n, 'step': step, 'setting': setting['name'], 'sampler': setting,
                'stats_path': os.path.abspath(stats_path), 'num_devices': mesh.size,
                'device': jax.devices()[0].device_kind, 'wall_seconds': time.time() - start,
                **metrics}
      for key in ('loss', 'bpd'):
        if key in ckpt_result:
          result[key] = ckpt_result[key]
      result = results.json_ready(result)
      files.write_json(path, result)
      log.info('Snapshot %d, %s: FID %s, IS %s, KID %s, NFE %s', n, setting['name'],
               *(results.format_value(result[k], k) for k in ('fid', 'is', 'kid', 'nfe')))
      out.append(result)
    if not sweep:
      out.append(ckpt_result)
  if jax.process_index() == 0:
    results.write_summary(eval_dir)
  return out
