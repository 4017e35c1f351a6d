"""Official checkpoints as published, and `pretrained.load` / `--mode export`.

The `.pth` fixtures were written by score_sde_pytorch's own training code (its model in
DataParallel, EMA, Adam with warm-up, two real training steps, `save_checkpoint`), so they
hold what the released files hold: `module.` prefixes, the optimizer state with a
`numpy.float64` learning rate, the EMA's shadow list without the fixed Fourier weights.
One was written under numpy 1.x, one in torch's legacy non-zip format
(tests/fixtures/REFERENCE_CHECKPOINTS.md). The expected outputs are the reference network's,
with its live and its EMA weights.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import main
from run_utils import (REFERENCE_CHECKPOINTS, leaves_equal, reference_checkpoint_config,
                       set_keys, write_config_file)
from scoresde_jax import errors, pretrained, torch_pickle
from scoresde_jax.run import convert as run_convert
from scoresde_jax.run import results

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
EXPECTED = os.path.join(FIXTURES, 'ref_checkpoints_expected.npz')


def rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize('name', sorted(REFERENCE_CHECKPOINTS))
def test_reference_checkpoints_reproduce_the_reference_outputs(name):
  path = os.path.join(FIXTURES, name)
  _, _, prefix = REFERENCE_CHECKPOINTS[name]
  model = pretrained.load(path, reference_checkpoint_config(name))
  assert (model.source, model.step) == ('pytorch', 2)
  with np.load(EXPECTED) as f:
    ref = {k[len(prefix) + 1:]: f[k] for k in f.files if k.startswith(prefix + '_')}
  apply = jax.jit(lambda p: model.model.apply({'params': p}, ref['x'], ref['labels'],
                                              train=False))
  assert rel_err(apply(model.params), ref['model_ema']) < 1e-5
  assert rel_err(apply(model.raw_params), ref['model_live']) < 1e-5
  # Two steps at lr 0.01 moved the weights: the two sets give different outputs.
  assert rel_err(ref['model_live'], ref['model_ema']) > 1e-3
  # The score function: the SDE's time-to-label map and output scaling as the reference's.
  assert rel_err(model.score_fn(ref['x'], ref['t']), ref['score_ema']) < 1e-5


def test_what_the_reference_files_hold():
  tree = torch_pickle.load(os.path.join(FIXTURES, 'ref_ve_ncsnpp.pth'))
  assert sorted(tree) == ['ema', 'model', 'optimizer', 'step']
  group = tree['optimizer']['param_groups'][0]
  assert type(group['lr']) is np.float64 and group['lr'] == 0.01
  assert all(k.startswith('module.') for k in tree['model'])
  legacy = torch_pickle.load(os.path.join(FIXTURES, 'ref_vp_ddpmpp.pth'))
  assert type(legacy['optimizer']['param_groups'][0]['lr']) is np.float64
  assert not torch_pickle._starts_as_zip(os.path.join(FIXTURES, 'ref_vp_ddpmpp.pth'))


def test_bad_checkpoint_files_are_one_line_errors(tmp_path):
  config = reference_checkpoint_config('ref_ve_ncsnpp.pth')
  path = os.path.join(FIXTURES, 'ref_ve_ncsnpp.pth')
  truncated = tmp_path / 'checkpoint_24.pth'
  truncated.write_bytes(open(path, 'rb').read()[:300_000])
  with pytest.raises(errors.CheckpointError, match='not a readable torch checkpoint.*stopped early'):
    pretrained.load(truncated, config)
  legacy = tmp_path / 'legacy.pth'
  legacy.write_bytes(open(os.path.join(FIXTURES, 'ref_vp_ddpmpp.pth'), 'rb').read()[:300_000])
  with pytest.raises(errors.CheckpointError, match='not a readable torch checkpoint'):
    pretrained.load(legacy, reference_checkpoint_config('ref_vp_ddpmpp.pth'))
  # Another architecture: the VP DDPM++ file under the VE NCSN++ config.
  with pytest.raises(errors.CheckpointError) as e:
    pretrained.load(os.path.join(FIXTURES, 'ref_vp_ddpmpp.pth'), config)
  message = str(e.value)
  assert 'does not fit the network of the config (model.name=ncsnpp' in message
  assert 'all_modules.' in message and '\n' not in message
  with pytest.raises(errors.ConfigError, match='holds no config'):
    pretrained.load(path)
  with pytest.raises(errors.CheckpointNotFoundError, match='Nothing at'):
    pretrained.load(tmp_path / 'missing.pth', config)
  with pytest.raises(errors.CheckpointError, match='neither a run directory'):
    pretrained.load(tmp_path)


def test_imported_reference_checkpoint_runs_sample_eval_and_export(tmp_path):
  """The published format end to end: import with the converter's command line, then the
  sample, eval and export modes of main.py on the run directory, and `load` of the export."""
  name = 'ref_ve_ncsnpp.pth'
  config = set_keys(reference_checkpoint_config(name), {
      'model.num_scales': 5, 'training.snapshot_freq': 1,
      'data.dataset': 'DIGITS',  # eval data that needs no download (8x8, as the network)
      'eval.batch_size': 4, 'eval.begin_ckpt': 2, 'eval.end_ckpt': 2,
      # The likelihood's path is the score function's, checked above; here the loss.
      'eval.enable_loss': True, 'eval.enable_bpd': False, 'eval.enable_sampling': False})
  config_file = write_config_file(tmp_path / 'config.py', config)
  workdir = str(tmp_path / 'run')
  run_convert.main(['--config', config_file, '--checkpoint', os.path.join(FIXTURES, name),
                    '--workdir', workdir])
  loaded = pretrained.load(os.path.join(FIXTURES, name), config)
  main.run('sample', config, workdir, num_samples=6)
  with np.load(os.path.join(workdir, 'eval', 'samples_step_2.npz')) as f:
    samples = f['samples']
  assert samples.shape == (6, 8, 8, 3) and samples.dtype == np.uint8 and samples.std() > 0
  pngs = sorted(os.listdir(os.path.join(workdir, 'eval', 'samples_step_2')))
  assert pngs == [f'{i:06d}.png' for i in range(6)]
  with Image.open(os.path.join(workdir, 'eval', 'samples_step_2', pngs[-1])) as im:
    np.testing.assert_array_equal(np.asarray(im), samples[-1])
  # Straight from the official file, no import: the same samples.
  direct = str(tmp_path / 'direct')
  main.run('sample', config, direct, num_samples=6, checkpoint=os.path.join(FIXTURES, name))
  with np.load(os.path.join(direct, 'eval', 'samples_step_2.npz')) as f:
    np.testing.assert_array_equal(f['samples'], samples)
  main.run('eval', config, workdir)
  result = results.read_json(results.ckpt_json(os.path.join(workdir, 'eval'), 2))
  assert result['step'] == 2
  assert np.isfinite(result['loss']) and result['loss'] > 0
  main.run('export', config, workdir)
  export_dir = os.path.join(workdir, 'export', 'step_2')
  exported = pretrained.load(export_dir)
  assert exported.source == 'export' and exported.step == 2
  assert leaves_equal(exported.params, loaded.params)
  assert leaves_equal(exported.raw_params, loaded.raw_params)
  # The export is self-contained: its config.json rebuilds the same network.
  moved = str(tmp_path / 'moved')
  shutil.copytree(export_dir, moved)
  x = jnp.full((2, 8, 8, 3), 0.3)
  t = jnp.array([0.5, 0.9])
  np.testing.assert_array_equal(pretrained.load(moved).score_fn(x, t), loaded.score_fn(x, t))
  # And the run directory itself loads (its newest snapshot).
  run = pretrained.load(workdir)
  assert run.source == 'run' and run.step == 2 and leaves_equal(run.params, loaded.params)


def test_export_refuses_parameters_of_another_network(tmp_path):
  config = reference_checkpoint_config('ref_ve_ncsnpp.pth')
  loaded = pretrained.load(os.path.join(FIXTURES, 'ref_ve_ncsnpp.pth'), config)
  written = pretrained.export(loaded, str(tmp_path / 'export'))
  other = reference_checkpoint_config('ref_ve_ncsnpp.pth')
  other.model.nf = 16
  with pytest.raises(errors.CheckpointError, match='does not fit the network of the config'):
    pretrained.load(tmp_path / 'export', other)
  with open(written['ema_params'], 'r+b') as f:
    f.truncate(100)
  with pytest.raises(errors.CheckpointError, match='not a readable safetensors file'):
    pretrained.load(tmp_path / 'export')


def test_diffusers_folder_loads_without_a_config(tmp_path):
  """A Hub repository's layout (model_index.json, unet/, scheduler/): the network, data shape
  and SDE come from the folder; outputs are diffusers' own (tests/test_diffusers_weights.py)."""
  folder = os.path.join(FIXTURES, 'diffusers_ncsnpp', 'pipeline')
  model = pretrained.load(folder)
  assert model.source == 'diffusers' and model.image_shape == (16, 16, 3)
  assert (model.sde.sigma_min, model.sde.sigma_max, model.sde.N) == (0.01, 348.0, 2000)
  assert model.config.sampling.snr == 0.075
  with np.load(os.path.join(FIXTURES, 'diffusers_ncsnpp_expected.npz')) as f:
    x, sigmas, want = f['x'], f['sigmas'], f['pipeline']
  # The VE score function labels each time with its sigma, as diffusers' pipeline does.
  t = np.log(sigmas / 0.01) / np.log(348.0 / 0.01)
  assert rel_err(model.score_fn(x, t), want) < 1e-5
  # The same folder through its unet/ subfolder, and the unet folder without its weights.
  unet = str(tmp_path / 'unet')
  shutil.copytree(os.path.join(folder, 'unet'), unet)
  assert leaves_equal(pretrained.load(unet).params, model.params)
  os.remove(os.path.join(unet, 'diffusion_pytorch_model.safetensors'))
  with pytest.raises(errors.CheckpointError, match='weights') as e:
    pretrained.load(unet)
  assert '\n' not in str(e.value)
