"""Checkpoint conversion: PyTorch state dicts, PyTorch EMA shadow lists, JAX msgpack."""
import json
import os

import flax
import jax
import ml_collections
import numpy as np
import pytest

from scoresde_jax import convert, errors, torch_pickle
from scoresde_jax.run import convert as run_convert
from scoresde_jax.run import networks

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
CASE = 'ncsnpp_ve_outskip'  # Fourier embedding (fixed W), three levels, pyramids


def load_case(name=CASE):
  data = np.load(os.path.join(FIXTURES, name + '.npz'))
  config = ml_collections.ConfigDict(json.loads(str(data['config'])))
  state_dict = {k[len('sd/'):]: data[k] for k in data.files if k.startswith('sd/')}
  param_names = json.loads(str(data['param_names']))
  return config, state_dict, param_names, data['x'], data['labels'], data['out']


def net(config):
  """The network of `config` and the shape of one input image, what the converter takes."""
  size = config.data.image_size
  return networks.get_model(config), (size, size, config.data.num_channels)


@pytest.fixture(scope='module')
def case():
  config, sd, names, x, labels, ref = load_case()
  model = networks.get_model(config)
  apply = jax.jit(lambda p: model.apply({'params': p}, x, labels, train=False))
  return config, sd, names, ref, apply


def rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_layouts_and_prefix(case):
  config, sd, _, _, _ = case
  assert all(k.startswith('module.') for k in sd)  # DataParallel layout, as released
  params = convert.torch_state_dict_to_params(sd, *net(config))
  # Conv OIHW -> HWIO, Linear (out, in) -> (in, out), GroupNorm weight -> scale.
  np.testing.assert_array_equal(params['Conv_0']['kernel'],
                                sd['module.all_modules.3.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['Dense_0']['kernel'], sd['module.all_modules.1.weight'].T)
  np.testing.assert_array_equal(params['GaussianFourierProjection_0']['W'],
                                sd['module.all_modules.0.W'])
  np.testing.assert_array_equal(params['ResnetBlockBigGANpp_0']['GroupNorm_0']['scale'],
                                sd['module.all_modules.4.GroupNorm_0.weight'])
  # Without the prefix: the same tree.
  bare = convert.torch_state_dict_to_params({k[7:]: v for k, v in sd.items()}, *net(config))
  jax.tree.map(np.testing.assert_array_equal, params, bare)


def test_ema_shadow_list(case):
  config, sd, names, ref, apply = case
  # The EMA list follows model.parameters() (trainable only): the names recorded by the
  # reference. Give the model state dict garbage trainable values: only W must be used.
  shadow = [sd[n] for n in names]
  assert 'module.all_modules.0.W' not in names
  garbage = {k: (v if k.endswith('all_modules.0.W') or k.endswith('sigmas') else v * 0 + 7.)
             for k, v in sd.items()}
  params = convert.ema_shadow_to_params(shadow, garbage, *net(config))
  assert rel_err(apply(params), ref) < 1e-5
  with pytest.raises(ValueError, match='shadow'):
    convert.ema_shadow_to_params(shadow[:-1], sd, *net(config))
  with pytest.raises(ValueError, match='aligned'):
    convert.ema_shadow_to_params(shadow[1:] + shadow[:1], sd, *net(config))


def test_mismatched_state_dicts_raise(case):
  config, sd, _, _, _ = case
  extra = dict(sd, **{'module.all_modules.4.Conv_9.weight': np.zeros((1, 1, 1, 1))})
  with pytest.raises(ValueError, match='Conv_9'):
    convert.torch_state_dict_to_params(extra, *net(config))
  missing = {k: v for k, v in sd.items() if not k.endswith('all_modules.4.Conv_1.bias')}
  with pytest.raises(ValueError, match='missing'):
    convert.torch_state_dict_to_params(missing, *net(config))
  with pytest.raises(ValueError, match='all_modules'):
    convert.torch_state_dict_to_params(dict(sd, foo=np.zeros(1)), *net(config))
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.nf = 16
  with pytest.raises(ValueError, match='shape'):
    convert.torch_state_dict_to_params(sd, *net(other))
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.progressive = 'none'
  # Fewer modules in the network: the first PyTorch module that does not fit is named.
  with pytest.raises(ValueError, match=r'all_modules\.17\.weight of shape \(16,\)'):
    convert.torch_state_dict_to_params(sd, *net(other))


def test_unused_unconditional_dense_layers_are_dropped():
  # PyTorch creates Dense_0 in every block even when unconditional (never used).
  config, sd, _, x, labels, ref = load_case('ncsnpp_biggan_naive_cat_uncond')
  assert any('.Dense_0.' in k for k in sd)
  params = convert.torch_state_dict_to_params(sd, *net(config))
  assert not any('Dense_0' in block for block in params.values() if isinstance(block, dict))


def test_ncsnv2_state_dict_and_ema_shadow_list():
  # NCSN/NCSNv2 name their modules (no all_modules.<i>): converted by ncsnv2.params_from_torch.
  from configs import load_config
  data = np.load(os.path.join(FIXTURES, 'ncsnv2_64.npz'))
  config = load_config(os.path.join(os.path.dirname(FIXTURES), '..', 'configs', 've', 'ncsnv2',
                                    'cifar10.py'))
  config.model.update(name='ncsnv2_64', nf=int(data['nf']), num_scales=int(data['num_scales']),
                      sigma_max=type(config.model.sigma_max)(data['sigma_max']))
  config.data.update(image_size=int(data['image_size']), centered=bool(data['centered']))
  sd = {'module.' + k[len('sd/'):]: data[k] for k in data.files if k.startswith('sd/')}
  model, image_shape = net(config)
  params = convert.torch_state_dict_to_params(sd, model, image_shape)
  out = model.apply({'params': params}, data['x'], data['labels'], train=False)
  assert rel_err(out, data['out']) < 1e-5
  # The EMA list holds every entry but the sigmas buffer, in state-dict order.
  shadow = [v for k, v in sd.items() if not k.endswith('sigmas')]
  garbage = {k: (v if k.endswith('sigmas') else v * 0 + 7.) for k, v in sd.items()}
  ema = convert.ema_shadow_to_params(shadow, garbage, model, image_shape)
  jax.tree.map(np.testing.assert_array_equal, ema, params)


def test_jax_msgpack_release_layout(case, tmp_path):
  config, sd, _, ref, apply = case
  params = jax.tree.map(np.asarray, convert.torch_state_dict_to_params(sd, *net(config)))
  raw = jax.tree.map(lambda a: a * 0 + 1., params)
  # The original training State, serialized by flax: EMA params and the optimizer target.
  state = {'step': np.int64(1000), 'optimizer': {'target': raw, 'state': {'step': 1000}},
           'lr': np.float32(2e-4), 'model_state': {}, 'ema_rate': np.float32(0.999),
           'params_ema': params, 'rng': np.zeros(2, np.uint32)}
  path = str(tmp_path / 'checkpoint_26')
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(state))
  ema = convert.jax_msgpack_to_params(path)
  jax.tree.map(np.testing.assert_array_equal, ema, params)
  assert rel_err(apply(ema), ref) < 1e-5
  target = convert.jax_msgpack_to_params(path, use_ema=False)
  jax.tree.map(np.testing.assert_array_equal, target, raw)


def test_bad_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError):
    convert.jax_msgpack_to_params(str(tmp_path / 'nope'))
  with pytest.raises(FileNotFoundError):
    convert.torch_checkpoint_to_params(str(tmp_path / 'nope.pth'), None, None)
  bad = tmp_path / 'garbage'
  bad.write_bytes(b'\xc1\xc1 not msgpack')
  with pytest.raises(ValueError, match='msgpack'):
    convert.jax_msgpack_to_params(str(bad))
  other = tmp_path / 'other'
  other.write_bytes(flax.serialization.msgpack_serialize({'foo': np.zeros(1)}))
  with pytest.raises(ValueError, match='params_ema'):
    convert.jax_msgpack_to_params(str(other))


def test_torch_checkpoint_file():
  # A full training checkpoint written by torch.save: {'model': state dict whose trainable
  # entries are overwritten with 7s, 'ema': {'shadow_params': the real weights}, ...}.
  config, _, _, x, labels, ref = load_case('ncsnpp_ddpmblock_fir_noconv')
  path = os.path.join(FIXTURES, 'ncsnpp_checkpoint.pth')
  model, image_shape = net(config)
  params = convert.torch_checkpoint_to_params(path, model, image_shape)
  out = jax.jit(lambda p: model.apply({'params': p}, x, labels, train=False))(params)
  assert rel_err(out, ref) < 1e-5
  raw = convert.torch_checkpoint_to_params(path, model, image_shape, use_ema=False)
  assert all(np.all(np.asarray(leaf) == 7.) for leaf in jax.tree.leaves(raw))


# ----------------------------------------------------------------------------------------
# Import into a run directory (orbax snapshot + config.json), what eval/sample modes read.


def full_config(name='ncsnpp_ddpmblock_fir_noconv'):
  """The fixture's network and data settings inside a complete training config."""
  from configs.default_cifar10_configs import get_default_configs
  small = load_case(name)[0].to_dict()
  full = get_default_configs().to_dict()
  for section in ('model', 'data', 'training'):
    full[section].update(small[section])
  full['training'].update(sde='vesde', snapshot_freq=5)
  return ml_collections.ConfigDict(full)


def template_state(config):
  from scoresde_jax.run import setup
  # Abstract (shapes only): what restoring needs, without running the initializers.
  return jax.eval_shape(lambda key: setup.create_train_state(config, key)[2],
                        jax.random.PRNGKey(1))


def test_import_torch_checkpoint_into_workdir(tmp_path):
  from scoresde_jax import checkpoints
  config = full_config()
  _, _, _, x, labels, ref = load_case('ncsnpp_ddpmblock_fir_noconv')
  path = os.path.join(FIXTURES, 'ncsnpp_checkpoint.pth')
  workdir = str(tmp_path / 'run')
  state = run_convert.import_checkpoint(config, path, workdir)
  assert int(state.step) == 3  # the 'step' the fixture's torch.save recorded
  restored = checkpoints.restore_snapshot(workdir, template_state(config), 3)
  assert int(restored.step) == 3
  # EMA weights -> ema_params, raw model weights (the fixture's 7s) -> params.
  jax.tree.map(np.testing.assert_array_equal, restored.ema_params,
               convert.torch_checkpoint_to_params(path, *net(config)))
  jax.tree.map(np.testing.assert_array_equal, restored.params,
               convert.torch_checkpoint_to_params(path, *net(config), use_ema=False))
  assert all(np.all(np.asarray(leaf) == 7.) for leaf in jax.tree.leaves(restored.params))
  # The restored EMA network reproduces the reference's output.
  model = networks.get_model(config)
  out = jax.jit(lambda p: model.apply({'params': p}, x, labels, train=False))(
      restored.ema_params)
  assert rel_err(out, ref) < 1e-5
  # A fresh optimizer state (the official Adam moments are not imported): all zeros.
  moments = [leaf for leaf in jax.tree.leaves(restored.opt_state)
             if np.issubdtype(np.asarray(leaf).dtype, np.floating)]
  assert moments and all(not np.any(np.asarray(m)) for m in moments)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['nf'] == config.model.nf
  # Importing twice at one step, or another config into the same run, is refused.
  with pytest.raises(ValueError, match='already holds a snapshot'):
    run_convert.import_checkpoint(config, path, workdir)
  other = full_config()
  other.model.nonlinearity = 'swish'
  with pytest.raises(errors.WorkdirConfigMismatch):
    run_convert.import_checkpoint(other, path, workdir, step=10)


def test_import_jax_checkpoint_and_step(tmp_path):
  from scoresde_jax import checkpoints
  config = full_config()
  params = jax.tree.map(np.asarray, convert.torch_checkpoint_to_params(
      os.path.join(FIXTURES, 'ncsnpp_checkpoint.pth'), *net(config)))
  raw = jax.tree.map(lambda a: a * 0 - 2., params)
  state = {'step': np.int64(1000), 'optimizer': {'target': raw, 'state': {'step': 1000}},
           'lr': np.float32(2e-4), 'model_state': {}, 'ema_rate': np.float32(0.999),
           'params_ema': params, 'rng': np.zeros(2, np.uint32)}
  path = str(tmp_path / 'checkpoint_200')  # the JAX release: no file extension
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(state))
  assert not torch_pickle.is_torch_file(path)
  template = template_state(config)
  imported = run_convert.import_checkpoint(config, path, str(tmp_path / 'a'))
  assert int(imported.step) == 1000  # stored step
  restored = checkpoints.restore_snapshot(str(tmp_path / 'a'), template, 1000)
  jax.tree.map(np.testing.assert_array_equal, restored.ema_params, params)
  jax.tree.map(np.testing.assert_array_equal, restored.params, raw)
  # An explicit step wins over the stored one (here: checkpoint index 40 at snapshot_freq 5).
  run_convert.import_checkpoint(config, path, str(tmp_path / 'b'), step=40 * 5)
  restored = checkpoints.restore_snapshot(str(tmp_path / 'b'), template, 200)
  assert int(restored.step) == 200
  jax.tree.map(np.testing.assert_array_equal, restored.ema_params, params)
  with pytest.raises(checkpoints.CheckpointError):
    checkpoints.restore_snapshot(str(tmp_path / 'b'), template, 1000)
  # Parameters of another network: a clear error naming the config.
  bad = dict(state, params_ema=jax.tree.map(lambda a: a[..., :1], params))
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(bad))
  with pytest.raises(ValueError, match='does not fit the network'):
    run_convert.import_checkpoint(config, path, str(tmp_path / 'c'))
  assert not os.path.exists(tmp_path / 'c' / 'checkpoints')


def write_config(path, config):
  """A config file outside configs/ whose get_config() returns `config`."""
  path.write_text('import json\nimport ml_collections\n\n\ndef get_config():\n'
                  f'  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n')
  return path


def test_import_command_line(tmp_path, capsys):
  from scoresde_jax import checkpoints
  config = full_config()
  config_file = write_config(tmp_path / 'small_config.py', config)
  path = os.path.join(FIXTURES, 'ncsnpp_checkpoint.pth')
  workdir = str(tmp_path / 'run')
  run_convert.main(['--config', str(config_file), '--checkpoint', path, '--workdir', workdir,
                    '--ckpt', '4'])
  printed = capsys.readouterr().out
  assert 'step 20' in printed and 'begin_ckpt=4' in printed  # 4 * snapshot_freq 5
  restored = checkpoints.restore_snapshot(workdir, template_state(config), 20)
  jax.tree.map(np.testing.assert_array_equal, restored.ema_params,
               convert.torch_checkpoint_to_params(path, *net(config)))
  with pytest.raises(SystemExit):
    run_convert.main(['--config', str(config_file), '--checkpoint', str(tmp_path / 'nope.pth'),
                      '--workdir', workdir])
  assert 'No checkpoint' in capsys.readouterr().err


def test_command_line_output_and_one_line_errors(tmp_path, capsys):
  config = full_config()
  path = os.path.join(FIXTURES, 'ncsnpp_checkpoint.pth')
  output = tmp_path / 'params.msgpack'
  run_convert.main(['--config', str(write_config(tmp_path / 'small_config.py', config)),
                    '--checkpoint', path, '--output', str(output), '--no-ema'])
  with open(output, 'rb') as f:
    params = flax.serialization.msgpack_restore(f.read())
  jax.tree.map(np.testing.assert_array_equal, params,
               convert.torch_checkpoint_to_params(path, *net(config), use_ema=False))
  # A config of another network: the converter's message as one line, no traceback.
  config.model.nf = 16
  capsys.readouterr()
  with pytest.raises(SystemExit):
    run_convert.main(['--config', str(write_config(tmp_path / 'other_config.py', config)),
                      '--checkpoint', path, '--output', str(tmp_path / 'other.msgpack')])
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'shape' in err and 'Traceback' not in err
  with pytest.raises(SystemExit):
    run_convert.main(['--config', str(tmp_path / 'nope.py'), '--checkpoint', path,
                      '--output', str(tmp_path / 'other.msgpack')])
  assert 'Config file not found' in capsys.readouterr().err
