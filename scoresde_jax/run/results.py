"""The files of an evaluation run and the summary built from them.

  WORKDIR/EVAL_FOLDER/ckpt_<n>.json              loss and bits/dim of snapshot n
  WORKDIR/EVAL_FOLDER/ckpt_<n>_<setting>.json    FID / IS / KID / NFE / seconds of one setting
  WORKDIR/EVAL_FOLDER/summary.md, summary.csv    one row per (snapshot, setting)

JSON files are written atomically (`scoresde_jax.files`); a file that exists is a result that is done.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from typing import Sequence

from scoresde_jax import files
from scoresde_jax.run import setup

log = logging.getLogger(__name__)

# IS beside its number of splits: score_sde reports 1 split, the Inception-score papers 10.
SUMMARY_COLUMNS = ('ckpt', 'step', 'setting', 'num_samples', 'nfe', 'fid', 'is', 'is_splits',
                   'kid', 'loss', 'bpd', 'seconds')


def _finite_or_none(x):
  """JSON has no NaN/Inf: non-finite numbers become null."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def json_ready(d: dict) -> dict:
  return {k: (_finite_or_none(v) if isinstance(v, float) else setup.plain(v)) for k, v in d.items()}


def setting_json(eval_dir, ckpt, name):
  return os.path.join(eval_dir, f'ckpt_{ckpt}_{name}.json')


def ckpt_json(eval_dir, ckpt):
  return os.path.join(eval_dir, f'ckpt_{ckpt}.json')


def read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def wait_for(paths: Sequence[str], what: str, timeout: float = 3600.0):
  """Waits for other hosts' files (shared filesystem), as the reference does."""
  start, warned = time.time(), False
  while not all(os.path.exists(p) for p in paths):
    if not warned:
      log.warning('Waiting for %s of the other hosts.', what)
      warned = True
    if time.time() - start > timeout:
      raise TimeoutError(f'{what} of other hosts did not appear within {timeout:.0f} s.')
    time.sleep(5.0)


def collect_results(eval_dir: str) -> list[dict]:
  """One row per (snapshot, setting) from the JSON files of `eval_dir`, sorted by snapshot.

  Loss and bits/dim of ckpt_<n>.json are merged into the rows of snapshot n; a snapshot with
  no sampler results gets one row with an empty setting.
  """
  per_ckpt, per_setting = {}, []
  for name in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []:
    if not (name.startswith('ckpt_') and name.endswith('.json')):
      continue
    data = read_json(os.path.join(eval_dir, name))
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


def format_value(value, column):
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
    lines.append('| ' + ' | '.join(format_value(row.get(c), c) for c in SUMMARY_COLUMNS) + ' |')
  md_path, csv_path = os.path.join(eval_dir, 'summary.md'), os.path.join(eval_dir, 'summary.csv')
  files.write_atomic(md_path, ('\n'.join(lines) + '\n').encode())
  files.write_atomic(csv_path, csv_buffer.getvalue().encode())
  return md_path, csv_path
