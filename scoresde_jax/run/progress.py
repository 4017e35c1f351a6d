"""Progress reporting of the training loops: log lines, TensorBoard scalars and ETA, a
progress bar. No TensorFlow and no clu (each costs seconds at every start).

`TrainingProgress` is what both `--mode train` and `--mode train_classifier` use:

  * at the start, the parameter overview (name, shape, dtype, size, mean and std of every
    parameter array, and the total; clu's `parameter_overview` table) in the log;
  * at every log step one line `step 250/3000: loss 0.13334, lr 2e-04, 7.89 steps/s, ETA 5m48s`
    and the same numbers as TensorBoard scalars (`run.tensorboard` writer);
  * once a minute and at the last step, the `steps_per_sec` and `uptime` scalars (what clu's
    `periodic_actions.ReportProgress` wrote);
  * on an interactive terminal, a self-rewriting progress bar between the log lines
    (nothing in files, pipes or CI logs); in a Jupyter or Colab notebook, a progress bar in
    the cell's output, updated in place (with the last loss: notebooks hide INFO log lines
    unless logging is configured).
"""
from __future__ import annotations

import html
import logging
import sys
import time
import uuid

import jax
import numpy as np

log = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
  if seconds != seconds or seconds == float('inf'):  # NaN or inf: no rate measured yet
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class ProgressBar:
  """One status line rewritten in place on an interactive terminal; silent elsewhere."""

  def __init__(self, total: int, initial: int = 0, stream=None, min_interval: float = 0.25):
    self._stream = stream if stream is not None else sys.stderr
    isatty = getattr(self._stream, 'isatty', None)
    self.enabled = bool(isatty and isatty()) and jax.process_index() == 0
    self._total, self._initial = total, initial
    self._start = time.monotonic()
    self._min_interval = min_interval
    self._last_draw = None
    self.note = ''  # shown by the notebook bar only (the terminal has the log lines)

  def update(self, step: int):
    if not self.enabled:
      return
    now = time.monotonic()
    if self._last_draw is not None and now - self._last_draw < self._min_interval:
      return
    self._last_draw = now
    rate = (step - self._initial) / max(now - self._start, 1e-9)
    eta = (self._total - step) / rate if rate > 0 else float('inf')
    width = 30
    filled = min(width, int(width * step / max(self._total, 1)))
    self._stream.write(f'\r[{"#" * filled}{"." * (width - filled)}] {step}/{self._total} '
                       f'{rate:.2f} steps/s, ETA {format_seconds(eta)}\033[K')
    self._stream.flush()

  def clear(self):
    """Erases the bar so that a log line can take its place (redrawn on the next update)."""
    if self.enabled and self._last_draw is not None:
      self._stream.write('\r\033[K')
      self._stream.flush()
      self._last_draw = None

  def close(self):
    self.clear()


def in_notebook() -> bool:
  """True inside a Jupyter / Colab kernel (not a terminal IPython, not plain Python)."""
  ipython = sys.modules.get('IPython')  # never imported here: only where it already runs
  if ipython is None:
    return False
  try:
    shell = ipython.get_ipython()
  except Exception:  # pylint: disable=broad-except
    return False
  if shell is None:
    return False
  return hasattr(shell, 'kernel') or 'IPKernelApp' in getattr(shell, 'config', {})


def _ipython_display(bundle: dict, display_id: str, update: bool):
  from IPython.display import display  # pylint: disable=import-outside-toplevel
  display(bundle, raw=True, display_id=display_id, update=update)


class NotebookProgressBar:
  """A progress bar in a notebook cell's output, updated in place (`display_id`).

  `display(bundle, display_id=..., update=...)` publishes a MIME bundle ({'text/plain': ...,
  'text/html': ...}); by default IPython's `display(..., raw=True)`. The first draw creates
  the output, later ones update it, at most every `min_interval` seconds (and at `close`).
  """

  def __init__(self, total: int, initial: int = 0, display=None, min_interval: float = 0.5):
    self._display = display or _ipython_display
    self.enabled = jax.process_index() == 0
    self._total, self._initial = total, initial
    self._start = time.monotonic()
    self._min_interval = min_interval
    self._last_draw = None
    self._shown = False
    self._step = initial
    self._id = uuid.uuid4().hex
    self.note = ''

  def bundle(self, step: int, now: float) -> dict:
    """The bar at `step` as text and HTML."""
    rate = (step - self._initial) / max(now - self._start, 1e-9)
    eta = (self._total - step) / rate if rate > 0 else float('inf')
    status = f'{step}/{self._total} {rate:.2f} steps/s, ETA {format_seconds(eta)}'
    if self.note:
      status += f', {self.note}'
    width = 30
    filled = min(width, int(width * step / max(self._total, 1)))
    text = f'[{"#" * filled}{"." * (width - filled)}] {status}'
    page = (f'<div><progress value="{step}" max="{max(self._total, 1)}" '
            f'style="width: 30em; vertical-align: middle"></progress> '
            f'<code>{html.escape(status)}</code></div>')
    return {'text/plain': text, 'text/html': page}

  def update(self, step: int, force: bool = False):
    if not self.enabled:
      return
    self._step = step
    now = time.monotonic()
    if (not force and self._last_draw is not None
        and now - self._last_draw < self._min_interval):
      return
    self._last_draw = now
    self._display(self.bundle(step, now), display_id=self._id, update=self._shown)
    self._shown = True

  def clear(self):
    """Nothing: log lines go below the bar's output, which stays."""

  def close(self):
    """Draws the last step (a throttled update may have skipped it)."""
    if self._shown or self._step != self._initial:
      self.update(self._step, force=True)


def make_bar(total: int, initial: int = 0):
  """The notebook bar inside a Jupyter / Colab kernel, else the terminal bar."""
  if in_notebook():
    return NotebookProgressBar(total, initial)
  return ProgressBar(total, initial)


def parameter_table(params) -> str:
  """clu's parameter overview: a table of every array (sorted by '/'-joined name) with its
  shape, dtype, size, mean and std, then 'Total: 10,857 -- 43,428 bytes'."""
  params = jax.device_get(params)
  rows = []
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                    for k in path)
    value = np.asarray(value)
    rows.append((name, str(value.shape), str(value.dtype), f'{value.size:,}',
                 f'{float(value.mean()):.3}' if value.size else 'nan',
                 f'{float(value.std()):.3}' if value.size else 'nan', value))
  rows.sort(key=lambda row: row[0])
  header = ('Name', 'Shape', 'Dtype', 'Size', 'Mean', 'Std')
  widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
  separator = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'

  def line(cells):
    return '|' + '|'.join(f' {c:<{w}} ' for c, w in zip(cells, widths)) + '|'

  total = sum(row[-1].size for row in rows)
  nbytes = sum(row[-1].nbytes for row in rows)
  return '\n'.join([separator, line(header), separator, *(line(row[:6]) for row in rows),
                    separator, f'Total: {total:,} -- {nbytes:,} bytes'])


class TrainingProgress:
  """Reporting of one training loop from `initial_step` to `total_steps`.

  Args:
    writer: a `run.tensorboard` writer (`loop.make_writer`) or None (log lines only); closed
      by `close()`.
    total_steps: the run's last step (for the ETA and the bar).
    initial_step: the step this invocation starts from (a resumed run's rates count from it).
    learning_rate: count -> learning rate (`losses.learning_rate_schedule`), or None.
    prefix: word before the step number in log lines ('step', 'classifier step').
    loss_name: the loss's scalar name in TensorBoard.
    bar: the progress bar (default `make_bar`: a notebook's or a terminal's).
    rate_every_secs: the period of the steps_per_sec and uptime scalars.
  """

  def __init__(self, writer, total_steps: int, initial_step: int, learning_rate=None,
               prefix: str = 'step', loss_name: str = 'training_loss', bar=None,
               rate_every_secs: float = 60.0):
    self._writer = writer
    self._total = total_steps
    self._learning_rate = learning_rate
    self._prefix = prefix
    self._loss_name = loss_name
    self._bar = bar if bar is not None else make_bar(total_steps, initial_step)
    self._last_time, self._last_step = time.monotonic(), initial_step
    self._start = time.monotonic()
    self._rate_every = rate_every_secs
    # (step, time) of the last steps_per_sec scalar; set at the first step, so the first
    # call's compilation is not counted (as clu's ReportProgress).
    self._rate_mark = None

  def parameter_overview(self, params):
    """Logs `parameter_table(params)` (process 0)."""
    if jax.process_index() == 0:
      self.log('Parameters:\n' + parameter_table(params))

  def step(self, step: int):
    """Called after every compiled call (cheap: no device synchronization)."""
    self._bar.update(step)
    if self._writer is None:
      return
    now = time.monotonic()
    if self._rate_mark is None:
      self._rate_mark = (step, now)
    elif now - self._rate_mark[1] >= self._rate_every or step >= self._total:
      rate = (step - self._rate_mark[0]) / max(now - self._rate_mark[1], 1e-9)
      self._writer.write_scalars(step, {'steps_per_sec': rate, 'uptime': now - self._start})
      self._rate_mark = (step, now)

  def report(self, step: int, loss: float, scalars: dict[str, float] | None = None):
    """Logs `loss`, the learning rate, steps/s and the ETA as one line; writes `loss` (as
    `loss_name`), the learning rate and `scalars` to the metric writer."""
    now = time.monotonic()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    values = {self._loss_name: loss, **(scalars or {})}
    lr_text = ''
    if self._learning_rate is not None:
      # The update that produced `step` was made after step - 1 earlier ones.
      values['learning_rate'] = float(self._learning_rate(step - 1))
      lr_text = f', lr {values["learning_rate"]:.3g}'
    eta = (self._total - step) / rate if rate > 0 else float('inf')
    self._bar.note = f'loss {loss:.5f}{lr_text}'
    self.log(f'{self._prefix} {step}/{self._total}: loss {loss:.5f}{lr_text}, '
             f'{rate:.2f} steps/s, ETA {format_seconds(eta)}')
    if self._writer is not None:
      self._writer.write_scalars(step, values)

  def log(self, message: str, level: int = logging.INFO):
    self._bar.clear()
    log.log(level, message)

  def close(self):
    """Ends the bar; flushes and closes the writer."""
    self._bar.close()
    if self._writer is not None:
      self._writer.close()
