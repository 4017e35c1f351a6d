"""The training progress line, ETA formatting, the terminal and notebook progress bars, the
parameter table and the TensorBoard writer."""
import io

import pytest

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


def test_notebook_detection_needs_a_kernel(monkeypatch):
  import sys
  import types
  fake = types.ModuleType('IPython')
  monkeypatch.setitem(sys.modules, 'IPython', fake)
  fake.get_ipython = lambda: None  # plain Python with IPython installed
  assert not progress.in_notebook()
  fake.get_ipython = lambda: types.SimpleNamespace(config={})  # terminal IPython
  assert not progress.in_notebook()
  fake.get_ipython = lambda: types.SimpleNamespace(config={'IPKernelApp': {}})
  assert progress.in_notebook()
  fake.get_ipython = lambda: types.SimpleNamespace(config={}, kernel=object())  # Colab
  assert progress.in_notebook()
  assert isinstance(progress.make_bar(10), progress.NotebookProgressBar)
  monkeypatch.delitem(sys.modules, 'IPython')
  assert not progress.in_notebook()
  assert isinstance(progress.make_bar(10), progress.ProgressBar)


def test_notebook_bar_creates_one_output_then_updates_it():
  calls = []
  bar = progress.NotebookProgressBar(100, initial=20, min_interval=3600,
                                     display=lambda bundle, **kw: calls.append((bundle, kw)))
  report = progress.TrainingProgress(None, total_steps=100, initial_step=20, bar=bar)
  report.step(40)
  report.step(50)  # within min_interval: not drawn
  report.report(60, 0.25)  # sets the note; draws nothing itself
  report.step(60)
  report.close()  # the last step, whatever the interval
  assert [kw['update'] for _, kw in calls] == [False, True]
  assert len({kw['display_id'] for _, kw in calls}) == 1
  first, last = calls[0][0], calls[-1][0]
  assert first['text/plain'].startswith('[' + '#' * 12 + '.' * 18 + '] 40/100 ')
  assert '<progress value="40" max="100"' in first['text/html']
  assert last['text/plain'].startswith('[' + '#' * 18 + '.' * 12 + '] 60/100 ')
  assert 'steps/s, ETA ' in last['text/plain'] and last['text/plain'].endswith(', loss 0.25000')
  assert '<progress value="60" max="100"' in last['text/html'] and 'loss 0.25000' in last[
      'text/html']


def test_parameter_table():
  import numpy as np
  params = {'b': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)},
            'a': {'bias': np.zeros(1000, np.float32)}}
  table = progress.parameter_table(params)
  lines = table.split('\n')
  assert lines[1].split() == ['|', 'Name', '|', 'Shape', '|', 'Dtype', '|', 'Size', '|', 'Mean',
                              '|', 'Std', '|']
  assert lines[3].split('|')[1:-1] == [' a/bias   ', ' (1000,) ', ' float32 ', ' 1,000 ',
                                       ' 0.0  ', ' 0.0  ']
  assert lines[4].split() == ['|', 'b/kernel', '|', '(2,', '3)', '|', 'float32', '|', '6', '|',
                              '2.5', '|', '1.71', '|']
  assert lines[0] == lines[2] == lines[5] and set(lines[0]) == {'+', '-'}
  assert lines[-1] == 'Total: 1,006 -- 4,024 bytes'
  assert len({len(line) for line in lines[:-1]}) == 1


def _events(directory):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(directory), size_guidance={
      'tensors': 0, 'images': 0})
  acc.Reload()
  return acc


def test_tensorboard_writer_round_trip(tmp_path):
  import numpy as np
  from PIL import Image
  from tensorboard.plugins.hparams import metadata as hparams_metadata
  from tensorboard.util import tensor_util
  from scoresde_jax.run import images, tensorboard

  gray = np.linspace(0, 1, 5 * 7).reshape(5, 7, 1)
  rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
  with tensorboard.create_writer(str(tmp_path)) as writer:
    writer.write_hparams({'optim.lr': 2e-4, 'model.name': 'ncsnpp', 'training.n_iters': 8,
                          'data.centered': False, 'model.ch_mult': [1, 2], 'x': None})
    writer.write_scalars(2, {'loss': 0.5, 'lr': np.float32(1e-3)})
    writer.write_scalars(4, {'loss': 0.25})
    writer.write_images(4, {'grid': gray, 'batch': rgb})
    writer.write_text(4, {'note': '**bold**'})
  acc = _events(tmp_path)

  # Scalars: the float32 scalar tensors of the scalars plugin (TensorBoard's Scalars page).
  assert set(acc.PluginTagToContent('scalars')) == {'loss', 'lr'}
  loss = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors('loss')}
  assert loss == {2: 0.5, 4: 0.25}
  (lr,) = acc.Tensors('lr')
  assert float(tensor_util.make_ndarray(lr.tensor_proto)) == pytest.approx(1e-3)

  # Images: [H, W, C] is one image under its name; a batch is name/0 ... name/N-1.
  assert sorted(acc.Tags()['images']) == ['batch/0', 'batch/1', 'batch/2', 'grid']
  (event,) = acc.Images('grid')
  assert (event.step, event.width, event.height) == (4, 7, 5)
  decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
  np.testing.assert_array_equal(decoded, images.to_uint8(gray)[..., 0])  # as the PNG files
  for i in range(3):
    (event,) = acc.Images(f'batch/{i}')
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))),
                                  rgb[i])

  # Text.
  (text,) = acc.Tensors('note')
  assert tensor_util.make_ndarray(text.tensor_proto).item() == b'**bold**'
  assert 'note' in acc.PluginTagToContent('text')

  # Hparams: the plugin's session-start info, values typed.
  content = acc.PluginTagToContent('hparams')[hparams_metadata.SESSION_START_INFO_TAG]
  info = hparams_metadata.parse_session_start_info_plugin_data(content)
  assert info.hparams['optim.lr'].number_value == pytest.approx(2e-4)
  assert info.hparams['training.n_iters'].number_value == 8
  assert info.hparams['model.name'].string_value == 'ncsnpp'
  assert info.hparams['data.centered'].bool_value is False
  assert info.hparams['model.ch_mult'].string_value == '[1, 2]'
  assert info.hparams['x'].string_value == 'None'


def test_tensorboard_writer_other_processes_write_nothing(tmp_path, monkeypatch):
  from scoresde_jax.run import loop, tensorboard
  monkeypatch.setattr(loop.jax, 'process_index', lambda: 1)
  writer = loop.make_writer(str(tmp_path / 'run'))
  assert isinstance(writer, tensorboard.NullWriter)
  with writer:
    writer.write_hparams({'a': 1})
    writer.write_scalars(1, {'loss': 1.0})
    writer.write_images(1, {'x': [[[0.5]]]})
    writer.write_text(1, {'t': 'x'})
    writer.flush()
  assert not (tmp_path / 'run').exists()


def test_training_progress_writes_rate_scalars_and_closes_the_writer(tmp_path):
  from scoresde_jax.run import tensorboard
  writer = tensorboard.create_writer(str(tmp_path))
  report = progress.TrainingProgress(writer, total_steps=4, initial_step=0,
                                     bar=progress.ProgressBar(4, stream=io.StringIO()))
  for step in range(1, 5):
    report.step(step)  # the first marks the start; the last step writes the rates
  report.report(4, 0.5)
  report.close()
  acc = _events(tmp_path)
  assert sorted(acc.PluginTagToContent('scalars')) == ['steps_per_sec', 'training_loss',
                                                       'uptime']
  assert [e.step for e in acc.Tensors('steps_per_sec')] == [4]
  with pytest.raises(ValueError):
    writer.write_scalars(5, {'x': 1.0})  # closed by TrainingProgress.close


def test_snapshot_pictures_go_to_tensorboard_and_png(tmp_path):
  """`train.save_samples` (what every snapshot calls) with a stand-in sampler: the grid and
  the diffusion picture as PNG files and as TensorBoard images at the snapshot's step."""
  import numpy as np
  from PIL import Image
  from scoresde_jax.run import images, tensorboard, train
  rng = np.random.default_rng(0)
  samples = rng.uniform(size=(8, 8, 8, 1)).astype(np.float32)
  trajectory = rng.uniform(size=(8, 8, 8, 8, 1)).astype(np.float32)  # [T, B, H, W, C]

  def sampler(key, score_fn):
    return samples, 10, trajectory

  with tensorboard.create_writer(str(tmp_path / 'tb')) as writer:
    train.save_samples(sampler, None, None, lambda x: x, str(tmp_path / 'iter_4'), writer, 4)
  for name in ('sample.png', 'diffusion.png', 'sample.npz'):
    assert (tmp_path / 'iter_4' / name).exists()
  acc = _events(tmp_path / 'tb')
  assert sorted(acc.Tags()['images']) == ['diffusion', 'samples']
  (event,) = acc.Images('samples')
  assert event.step == 4
  picture = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
  grid = images.make_grid(samples, nrow=2)[..., 0]  # the grid of sample.png, before its scale
  np.testing.assert_array_equal(picture, grid.repeat(4, axis=0).repeat(4, axis=1))  # 8 px: x4
  (event,) = acc.Images('diffusion')
  assert (event.width, event.height) == (4 * (8 * 10 + 2), 4 * (8 * 10 + 2))  # 8 steps x 8
