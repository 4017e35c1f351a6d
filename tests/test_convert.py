"""Checkpoint conversion: PyTorch state dicts, PyTorch EMA shadow lists, JAX msgpack."""
import json
import os

import flax
import jax
import ml_collections
import numpy as np
import pytest

from scoresde_jax import convert
from scoresde_jax.models import utils as mutils

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
CASE = 'ncsnpp_ve_outskip'  # Fourier embedding (fixed W), three levels, pyramids


def load_case(name=CASE):
  data = np.load(os.path.join(FIXTURES, name + '.npz'))
  config = ml_collections.ConfigDict(json.loads(str(data['config'])))
  state_dict = {k[len('sd/'):]: data[k] for k in data.files if k.startswith('sd/')}
  param_names = json.loads(str(data['param_names']))
  return config, state_dict, param_names, data['x'], data['labels'], data['out']


@pytest.fixture(scope='module')
def case():
  config, sd, names, x, labels, ref = load_case()
  model = mutils.get_model(config)
  apply = jax.jit(lambda p: model.apply({'params': p}, x, labels, train=False))
  return config, sd, names, ref, apply


def rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_layouts_and_prefix(case):
  config, sd, _, _, _ = case
  assert all(k.startswith('module.') for k in sd)  # DataParallel layout, as released
  params = convert.torch_state_dict_to_params(sd, config)
  # Conv OIHW -> HWIO, Linear (out, in) -> (in, out), GroupNorm weight -> scale.
  np.testing.assert_array_equal(params['Conv_0']['kernel'],
                                sd['module.all_modules.3.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['Dense_0']['kernel'], sd['module.all_modules.1.weight'].T)
  np.testing.assert_array_equal(params['GaussianFourierProjection_0']['W'],
                                sd['module.all_modules.0.W'])
  np.testing.assert_array_equal(params['ResnetBlockBigGANpp_0']['GroupNorm_0']['scale'],
                                sd['module.all_modules.4.GroupNorm_0.weight'])
  # Without the prefix: the same tree.
  bare = convert.torch_state_dict_to_params({k[7:]: v for k, v in sd.items()}, config)
  jax.tree.map(np.testing.assert_array_equal, params, bare)


def test_ema_shadow_list(case):
  config, sd, names, ref, apply = case
  # The EMA list follows model.parameters() (trainable only): the names recorded by the
  # reference. Give the model state dict garbage trainable values: only W must be used.
  shadow = [sd[n] for n in names]
  assert 'module.all_modules.0.W' not in names
  garbage = {k: (v if k.endswith('all_modules.0.W') or k.endswith('sigmas') else v * 0 + 7.)
             for k, v in sd.items()}
  params = convert.ema_shadow_to_params(shadow, garbage, config)
  assert rel_err(apply(params), ref) < 1e-5
  with pytest.raises(ValueError, match='shadow'):
    convert.ema_shadow_to_params(shadow[:-1], sd, config)
  with pytest.raises(ValueError, match='aligned'):
    convert.ema_shadow_to_params(shadow[1:] + shadow[:1], sd, config)


def test_mismatched_state_dicts_raise(case):
  config, sd, _, _, _ = case
  extra = dict(sd, **{'module.all_modules.4.Conv_9.weight': np.zeros((1, 1, 1, 1))})
  with pytest.raises(ValueError, match='Conv_9'):
    convert.torch_state_dict_to_params(extra, config)
  missing = {k: v for k, v in sd.items() if not k.endswith('all_modules.4.Conv_1.bias')}
  with pytest.raises(ValueError, match='missing'):
    convert.torch_state_dict_to_params(missing, config)
  with pytest.raises(ValueError, match='all_modules'):
    convert.torch_state_dict_to_params(dict(sd, foo=np.zeros(1)), config)
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.nf = 16
  with pytest.raises(ValueError, match='shape'):
    convert.torch_state_dict_to_params(sd, other)
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.progressive = 'none'
  with pytest.raises(ValueError, match='config does not match'):
    convert.torch_state_dict_to_params(sd, other)


def test_unused_unconditional_dense_layers_are_dropped():
  # PyTorch creates Dense_0 in every block even when unconditional (never used).
  config, sd, _, x, labels, ref = load_case('ncsnpp_biggan_naive_cat_uncond')
  assert any('.Dense_0.' in k for k in sd)
  params = convert.torch_state_dict_to_params(sd, config)
  assert not any('Dense_0' in block for block in params.values() if isinstance(block, dict))


def test_jax_msgpack_release_layout(case, tmp_path):
  config, sd, _, ref, apply = case
  params = jax.tree.map(np.asarray, convert.torch_state_dict_to_params(sd, config))
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
    convert.torch_checkpoint_to_params(str(tmp_path / 'nope.pth'), None)
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
  model = mutils.get_model(config)
  params = convert.torch_checkpoint_to_params(path, config)
  out = jax.jit(lambda p: model.apply({'params': p}, x, labels, train=False))(params)
  assert rel_err(out, ref) < 1e-5
  raw = convert.torch_checkpoint_to_params(path, config, use_ema=False)
  assert all(np.all(np.asarray(leaf) == 7.) for leaf in jax.tree.leaves(raw))
