"""Training runs through main.py's code path on tiny configs: resume, preemption, NaN, errors."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import configs
import main
from scoresde_jax import checkpoints, errors
from scoresde_jax.run import setup, train

from run_utils import leaves_equal, set_keys
from xla_test_flags import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(sde='ve', **overrides):
  config = configs.load_config(os.path.join(ROOT, f'configs/{sde}/digits.py'))
  config.model.nf = 8
  config.model.ch_mult = (1,)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = ()
  config.model.num_scales = 10
  config.model.dropout = 0.1
  config.training.batch_size = 8
  config.training.n_iters = 8
  config.training.n_jitted_steps = 1
  config.training.log_freq = 2
  config.training.eval_freq = 4
  config.training.snapshot_freq = 4
  config.training.snapshot_freq_for_preemption = 2
  config.training.snapshot_sampling = False
  config.eval.batch_size = 8
  return set_keys(config, overrides)


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, caplog, monkeypatch):
  """Bit for bit: parameters, EMA, optimizer state, step and RNG (dropout on, so the RNG
  stream and the data stream both matter; the warm-up spans the interruption). The resumed
  start loads the training step its first start compiled and stored, without tracing it.
  The uninterrupted run's log and TensorBoard scalars are checked too (one run for both)."""
  config = tiny_config(**{'training.snapshot_sampling': True, 'optim.warmup': 5,
                          'optim.lr': 1e-3})
  # The first start compiles the step (before the straight run puts it in the persistent
  # compilation cache, whose executables are not stored) and stores it.
  programs = str(tmp_path / 'programs')
  main.run('train', config, str(tmp_path / 'resumed'), max_steps=2,  # "killed" at step 2
           program_dir=programs)
  assert checkpoints.RunCheckpoints(str(tmp_path / 'resumed')).latest_step() == 2
  with caplog.at_level('INFO'):
    straight = train.train(config, str(tmp_path / 'straight'))
  check_progress_log_and_tensorboard_scalars(caplog.text, tmp_path / 'straight')
  get_loss_fn = setup.get_loss_fn

  def untraceable_training_loss(config, sde, model, train):
    loss_fn = get_loss_fn(config, sde, model, train)
    if not train:
      return loss_fn

    def traced(*args, **kwargs):
      raise AssertionError('the resumed run traced its training step')
    return traced

  monkeypatch.setattr(setup, 'get_loss_fn', untraceable_training_loss)
  caplog.clear()
  with caplog.at_level('INFO'):
    resumed = train.train(config, str(tmp_path / 'resumed'), program_dir=programs)
  assert 'Loaded the compiled program train_step-' in caplog.text
  assert int(resumed.step) == int(straight.step) == 8
  assert leaves_equal(resumed, straight)
  # Snapshots every 4 steps, with sample grids and the diffusion picture.
  ckpts = checkpoints.RunCheckpoints(str(tmp_path / 'straight'))
  assert ckpts.snapshot_steps() == [4, 8]
  for step in (4, 8):
    for name in ('sample.png', 'diffusion.png', 'sample.npz'):
      assert (tmp_path / 'straight' / 'samples' / f'iter_{step}' / name).exists()
  samples = np.load(tmp_path / 'straight' / 'samples' / 'iter_8' / 'sample.npz')['samples']
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8
  # Restoring the snapshot gives the final state.
  restored = ckpts.restore(setup.create_train_state(config, jax.random.PRNGKey(1))[2], step=8)
  assert leaves_equal(restored, straight)


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
  """A corrupt batch (NaN pixels) at step 7 makes the loss NaN there; the run stops naming
  step 7, and the checkpoint of step 6 (saved every 2 steps) restores with finite values."""
  config = tiny_config(**{'training.n_iters': 40})
  real_get_dataset = train.data.get_dataset

  def corrupt_at_step_7(config, split, **kwargs):
    for i, batch in enumerate(real_get_dataset(config, split, **kwargs)):
      if split == 'train' and kwargs.get('start_step', 0) + i == 6:
        batch = dict(batch, image=np.full_like(batch['image'], np.nan))
      yield batch

  monkeypatch.setattr(train.data, 'get_dataset', corrupt_at_step_7)
  workdir = str(tmp_path / 'nan')
  with pytest.raises(errors.TrainingDivergedError, match=r'Loss is nan at step 7; training stopped'
                     r'.*checkpoint \(step 6\) is intact'):
    train.train(config, workdir)
  ckpts = checkpoints.RunCheckpoints(workdir)
  assert ckpts.latest_step() == 6
  template = setup.create_train_state(config, jax.random.PRNGKey(0))[2]
  state = ckpts.restore(template)
  assert int(state.step) == 6
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state))


def test_workdir_of_another_config_is_refused(tmp_path):
  main.run('train', tiny_config(**{'training.n_iters': 2}), str(tmp_path))
  with pytest.raises(errors.WorkdirConfigMismatch, match=r'model.nf: 8 -> 16'):
    train.train(tiny_config(**{'model.nf': 16}), str(tmp_path))


def test_run_config_check_ignores_keys_added_after_the_run_started(tmp_path):
  from scoresde_jax.run import loop
  old = {'training': {'batch_size': 8}, 'data': {'dataset': 'DIGITS'}}
  loop.check_run_config(str(tmp_path), old, may_differ=())
  # A later version of the configs added keys: the run resumes.
  newer = {'training': {'batch_size': 8, 'importance_weighting': False},
           'data': {'dataset': 'DIGITS', 'path': ''}}
  loop.check_run_config(str(tmp_path), newer, may_differ=())
  # A key the run recorded, changed: refused.
  with pytest.raises(errors.WorkdirConfigMismatch, match='training.batch_size: 8 -> 16'):
    loop.check_run_config(str(tmp_path), {'training': {'batch_size': 16},
                                          'data': {'dataset': 'DIGITS'}}, may_differ=())


def _main(*args, env=None, timeout=300):
  full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                        env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('args,message', [
    (['--config', 'configs/ve/nonexistent.py'], 'nonexistent.py'),
    (['--config', 'configs/ve/digits.py', '--config.training.bach_size=4'], 'bach_size'),
    (['--config', 'configs/ve/digits.py', '--config.sampling.predictor=reverse_difusion'],
     "Unknown predictor 'reverse_difusion'"),
    (['--config', 'configs/ve/digits.py', '--config.training.sde=vpsd'],
     "Unknown SDE 'vpsd' (config.training.sde)"),
    (['--config', 'configs/ve/cifar10.py', '--config.data.dataset=CIFAR10',
      '--config.data.data_dir=/nonexistent'], 'tfds build cifar10'),
])
def test_mistakes_get_one_clear_line(tmp_path, args, message):
  proc = _main('--mode', 'train', '--workdir', str(tmp_path), *args)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('how', ['xla_flags', 'cpu_devices'])
def test_batch_not_divisible_by_devices(tmp_path, how):
  """Eight CPU devices asked for either way (simulated host devices, or --cpu_devices=8,
  which also shows the flag reaches the backend); batch 12 does not split over them."""
  args = ('--mode', 'train', '--workdir', str(tmp_path), '--config', 'configs/ve/digits.py',
          '--config.training.batch_size=12')
  if how == 'xla_flags':
    proc = _main(*args, '--cpu_devices=3', env={'XLA_FLAGS': xla_flags(8)})  # the env wins
  else:
    proc = _main(*args, '--cpu_devices=8')
  assert proc.returncode == 2  # a user error (main.USER_ERROR)
  assert 'training.batch_size=12 is not divisible by the 8 devices' in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('mode,cores,expected', [
    ('train', 2, 2),  # batch 64 over the two cores
    ('train', 5, 4),  # the most devices that divide 64
    ('train', 1, 1),
    ('eval', 8, 6),  # eval.batch_size 12
    ('train_classifier', 8, 8),  # no classifier section: nothing to divide
    ('sample', 3, 3),  # sampling rounds its batch up to the devices itself
])
def test_cpu_devices_auto_divides_the_batch_of_the_mode(mode, cores, expected):
  config = configs.load_config(os.path.join(ROOT, 'configs/ve/digits.py'))
  config.training.batch_size = 64
  config.eval.batch_size = 12
  assert main.cpu_device_count('auto', config, mode, cores) == expected
  assert main.cpu_device_count('3', config, mode, cores) == 3


def test_bad_cpu_devices_flag_is_one_line(tmp_path):
  proc = _main('--mode', 'train', '--workdir', str(tmp_path), '--config', 'configs/ve/digits.py',
               '--cpu_devices=two')
  assert proc.returncode != 0
  assert '--cpu_devices must be auto or a whole number >= 1' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_sigterm_saves_and_the_rerun_resumes(tmp_path):
  """A scheduler's SIGTERM mid-run: the run saves its state and exits cleanly; rerunning the
  same command resumes from that step."""
  workdir = str(tmp_path / 'run')
  args = ['--mode', 'train', '--workdir', workdir, '--config', 'configs/ve/digits.py',
          '--config.model.nf=8', '--config.model.ch_mult=(1,)', '--config.model.attn_resolutions=()',
          '--config.training.batch_size=8', '--config.training.n_iters=100000',
          '--config.training.snapshot_freq=100000',
          '--config.training.snapshot_freq_for_preemption=100000', '--config.training.log_freq=1',
          '--config.training.eval_freq=100000']
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen([sys.executable, 'main.py', *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output = []
  for line in proc.stdout:  # wait until training steps are running (the handler is installed)
    output.append(line)
    if 'steps/s' in line:
      break
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=300)
  output.append(rest)
  assert proc.returncode == 0, ''.join(output)[-3000:]
  assert 'SIGTERM: saved step' in ''.join(output)
  saved = checkpoints.RunCheckpoints(workdir).latest_step()
  assert saved is not None and saved > 0
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['nf'] == 8


def _tensorboard_scalars(directory):
  """{tag: {step: value}} of the scalars plugin in the TensorBoard event files of `directory`."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(str(directory), size_guidance={'tensors': 0})
  acc.Reload()
  return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
          for tag in acc.PluginTagToContent('scalars')}


def check_progress_log_and_tensorboard_scalars(text, workdir):
  """The log and TensorBoard scalars of a tiny_config run with warm-up 5 and lr 1e-3."""
  assert 'Parameters:' in text and 'Total: 10,857' in text  # the overview at the start
  assert 'step 8/8: loss ' in text and 'steps/s, ETA ' in text
  scalars = _tensorboard_scalars(workdir)
  assert sorted(scalars['training_loss']) == [2, 4, 6, 8]  # log_freq 2
  assert sorted(scalars['eval_loss']) == [4, 8]
  # The learning rate of the update that made step s: lr * min((s - 1) / warmup, 1).
  for step, lr in scalars['learning_rate'].items():
    assert lr == pytest.approx(1e-3 * min((step - 1) / 5, 1.0), rel=1e-6)
  assert all(np.isfinite(v) and v > 0 for v in scalars['grad_norm'].values())
  # The same loss in the log line and in TensorBoard.
  assert f"step 8/8: loss {scalars['training_loss'][8]:.5f}" in text
  assert 8 in scalars['steps_per_sec'] and 8 in scalars['uptime']  # written at the last step


_EIGHT_DEVICE_RUN = '''
import logging, sys, numpy as np, jax
logging.basicConfig(level=logging.INFO)
sys.path[:0] = [{root!r}, {tests!r}]
from test_train import tiny_config
from scoresde_jax.run import train
assert jax.device_count() == 8
state = train.train(tiny_config(), {workdir!r})
np.savez({out!r}, *[np.asarray(x) for x in jax.tree_util.tree_leaves(state)])
'''


def test_eight_device_run_matches_one_device(tmp_path, caplog):
  """The whole training loop (data sharding, compiled step, logging, checkpoints) on a fake
  8-device mesh gives the losses and parameters of the 1-device run, up to the order of
  float32 reductions."""
  out = str(tmp_path / 'eight.npz')
  script = _EIGHT_DEVICE_RUN.format(root=ROOT, tests=os.path.join(ROOT, 'tests'),
                                    workdir=str(tmp_path / 'eight'), out=out)
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'on 8 cpu device(s)' in proc.stderr
  with caplog.at_level('INFO'):
    one = train.train(tiny_config(), str(tmp_path / 'one'))
  assert 'on 1 cpu device(s)' in caplog.text
  eight = np.load(out)
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(one)]
  assert len(leaves) == len(eight.files)
  for i, a in enumerate(leaves):
    b = eight[f'arr_{i}']
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
  assert 'step 8/8: loss ' in proc.stderr

  def logged(text):
    return [float(x) for x in __import__('re').findall(r'step \d+/8: loss ([0-9.]+)', text)]
  np.testing.assert_allclose(logged(proc.stderr), logged(caplog.text), rtol=1e-5)


def test_training_on_mock_cifar10(tmp_path, caplog):
  """The CIFAR-10 headline config (shrunk network) through main.run on tfds's mock data:
  the tfds pipeline, 3-channel 32x32 batches, fused steps (n_jitted_steps 2), eval, snapshots."""
  import tensorflow_datasets as tfds
  config = configs.load_config(os.path.join(ROOT, 'configs/ve/cifar10.py'))
  config.model.update(nf=8, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(),
                      fir=False, progressive='none', progressive_input='none')
  config.training.update(batch_size=4, n_iters=2, n_jitted_steps=2, log_freq=2, eval_freq=2,
                         snapshot_freq=2, snapshot_freq_for_preemption=2,
                         snapshot_sampling=False)
  config.eval.batch_size = 4
  with tfds.testing.mock_data(num_examples=16), caplog.at_level('INFO'):
    main.run('train', config, str(tmp_path))
  assert 'step 2/2: loss ' in caplog.text and 'step 2: eval loss ' in caplog.text
  ckpts = checkpoints.RunCheckpoints(str(tmp_path))
  assert ckpts.snapshot_steps() == [2]
  initial = setup.create_train_state(config, jax.random.PRNGKey(config.seed))[2]
  state = ckpts.restore(initial)
  assert int(state.step) == 2
  # The second step (the first has learning rate 0) moved the parameters.
  assert not leaves_equal(state.params, initial.params)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state))


def test_two_process_run_matches_one_process(tmp_path):
  """Many hosts, simulated by two CPU processes running `main.py --multihost` (one device
  each, joined through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID): each
  reads its half of every batch, one writes the config, orbax coordinates both checkpoint
  managers across the processes, snapshot samples are gathered; the final snapshot equals the
  one-process run's state."""
  import socket
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  config = tiny_config(**{'training.snapshot_sampling': True})
  overrides = {'model.nf': 8, 'model.ch_mult': '(1,)', 'model.num_res_blocks': 1,
               'model.attn_resolutions': '()', 'model.num_scales': 10, 'model.dropout': 0.1,
               'training.batch_size': 8, 'training.n_iters': 8, 'training.n_jitted_steps': 1,
               'training.log_freq': 2, 'training.eval_freq': 4, 'training.snapshot_freq': 4,
               'training.snapshot_freq_for_preemption': 2, 'training.snapshot_sampling': True,
               'eval.batch_size': 8}
  for key, value in overrides.items():  # the flags below give tiny_config()
    section, name = key.split('.')
    assert str(config[section][name]).replace(' ', '') == str(value), key
  workdir = str(tmp_path / 'two')
  args = [sys.executable, 'main.py', '--mode', 'train', '--multihost', '--workdir', workdir,
          '--cpu_devices=1',  # one device per process: the host split is what is tested
          '--config', 'configs/ve/digits.py'] + [f'--config.{k}={v}' for k, v in overrides.items()]
  procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(
                                os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, XLA_FLAGS=xla_flags(),
                                JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
                                JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
                                JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid)))
           for pid in (0, 1)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'Process 1 of 2, 1 of 2 devices here.' in outputs[1]
  assert 'on 2 cpu device(s)' in outputs[0]
  one = train.train(config, str(tmp_path / 'one'))
  ckpts = checkpoints.RunCheckpoints(workdir)
  assert ckpts.snapshot_steps() == [4, 8] and ckpts.latest_step() == 8
  # Snapshot samples gathered from both processes, written once.
  samples = np.load(os.path.join(workdir, 'samples', 'iter_8', 'sample.npz'))['samples']
  assert samples.shape == (8, 8, 8, 1)
  two = ckpts.restore(setup.create_train_state(config, jax.random.PRNGKey(1))[2])
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
