"""The training progress line, ETA formatting and the terminal-only progress bar."""
import io

from scoresde_jax.run import progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_format_seconds():
  assert progress.format_seconds(0.4) == '0s'
  assert progress.format_seconds(59) == '59s'
  assert progress.format_seconds(61) == '1m01s'
  assert progress.format_seconds(3 * 3600 + 5 * 60 + 59) == '3h05m'
  assert progress.format_seconds(float('inf')) == progress.format_seconds(float('nan')) == '?'


def test_bar_draws_only_on_a_terminal_and_clears_for_log_lines():
  pipe = io.StringIO()
  quiet = progress.ProgressBar(100, stream=pipe)
  quiet.update(10)
  quiet.clear()
  assert pipe.getvalue() == '' and not quiet.enabled  # files, pipes, CI logs: nothing

  tty = _Terminal()
  bar = progress.ProgressBar(100, initial=20, stream=tty, min_interval=0.0)
  bar.update(60)
  drawn = tty.getvalue()
  assert drawn.startswith('\r[' + '#' * 18 + '.' * 12 + '] 60/100 ') and 'ETA ' in drawn
  bar.clear()
  assert tty.getvalue() == drawn + '\r\033[K'
  bar.clear()  # nothing drawn since: nothing to erase
  assert tty.getvalue() == drawn + '\r\033[K'


def test_report_line_without_writer(caplog):
  report = progress.TrainingProgress(None, total_steps=10, initial_step=0,
                                     learning_rate=lambda count: 1e-3 * min(count / 4, 1.0))
  with caplog.at_level('INFO'):
    report.report(3, 0.123456)
  assert 'step 3/10: loss 0.12346, lr 0.0005, ' in caplog.text and 'steps/s, ETA ' in caplog.text
