"""Progress reporting of the training loops: log lines, clu scalars and ETA, a progress bar.

`TrainingProgress` is what both `--mode train` and `--mode train_classifier` use:

  * at the start, clu's parameter overview (name, shape, size, mean and std of every
    parameter array) in the log;
  * at every log step one line `step 250/3000: loss 0.13334, lr 2e-04, 7.89 steps/s, ETA 5m48s`
    and the same numbers as TensorBoard scalars (clu writers);
  * clu's `periodic_actions.ReportProgress` once a minute (the steps_per_sec and uptime
    scalars, and its ETA note in the log);
  * on an interactive terminal, a self-rewriting progress bar between the log lines
    (nothing in files, pipes or CI logs).
"""
from __future__ import annotations

import logging
import sys
import time

import jax

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


class TrainingProgress:
  """Reporting of one training loop from `initial_step` to `total_steps`.

  Args:
    writer: a clu `MetricWriter` or None (console log only).
    total_steps: the run's last step (for the ETA and the bar).
    initial_step: the step this invocation starts from (a resumed run's rates count from it).
    learning_rate: count -> learning rate (`losses.learning_rate_schedule`), or None.
    prefix: word before the step number in log lines ('step', 'classifier step').
    loss_name: the loss's scalar name in TensorBoard.
  """

  def __init__(self, writer, total_steps: int, initial_step: int, learning_rate=None,
               prefix: str = 'step', loss_name: str = 'training_loss'):
    self._writer = writer
    self._total = total_steps
    self._learning_rate = learning_rate
    self._prefix = prefix
    self._loss_name = loss_name
    self._bar = ProgressBar(total_steps, initial_step)
    self._last_time, self._last_step = time.monotonic(), initial_step
    self._report = None
    if writer is not None:
      from clu import periodic_actions  # pylint: disable=import-outside-toplevel
      self._report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                                     every_secs=60.0)

  def parameter_overview(self, params):
    if self._writer is None:
      return
    from clu import parameter_overview  # pylint: disable=import-outside-toplevel
    if jax.process_index() == 0:
      table = parameter_overview.get_parameter_overview(jax.device_get(params))
      self.log('Parameters:\n' + table)

  def step(self, step: int):
    """Called after every compiled call (cheap: no device synchronization)."""
    if self._report is not None:
      self._report(step)
    self._bar.update(step)

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
    self.log(f'{self._prefix} {step}/{self._total}: loss {loss:.5f}{lr_text}, '
             f'{rate:.2f} steps/s, ETA {format_seconds(eta)}')
    if self._writer is not None:
      self._writer.write_scalars(step, values)

  def log(self, message: str, level: int = logging.INFO):
    self._bar.clear()
    log.log(level, message)

  def close(self):
    self._bar.clear()
    if self._writer is not None:
      self._writer.flush()
