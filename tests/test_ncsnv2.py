"""NCSNv2 ('ncsnv2_64/128/256') and NCSN ('ncsn') against the reference PyTorch networks.

Fixtures tests/fixtures/ncsnv2_*.npz and ncsn.npz were produced by running the reference
score_sde_pytorch networks (NCSNv2, NCSNv2_128, NCSNv2_256, NCSN; small nf, 32x32 inputs,
parameters randomly perturbed off their initialization, eval mode) after the minimal local
fixes that make them build: `config.data.channels` set, dilated 3x3 convolutions padded by
their dilation, bias-free convolutions allowed, and (NCSN) conditional InstanceNorm++ with
one row per noise level and dilation 1 as the block default. Each holds the state dict
('sd/<key>'), inputs x [B, H, W, C] and labels [B], and the reference output (NHWC).
"""
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import load_config  # noqa: E402
from scoresde_jax import models  # noqa: E402
from scoresde_jax.models import ncsn_layers, ncsnv2  # noqa: E402
from scoresde_jax.run import networks  # noqa: E402

FIXTURES = ROOT / 'tests' / 'fixtures'
CASES = {  # fixture -> config it was made from
    'ncsnv2_64': 've/ncsnv2/cifar10.py',
    'ncsnv2_128': 've/ncsnv2/bedroom.py',
    'ncsnv2_256': 've/ncsnv2/bedroom.py',
    'ncsn': 've/ncsn/cifar10.py',
}


def _fixture(name):
  data = np.load(FIXTURES / f'{name}.npz')
  config = load_config(str(ROOT / 'configs' / CASES[name]))
  config.model.name = name
  config.model.nf = int(data['nf'])
  config.model.num_scales = int(data['num_scales'])
  config.model.sigma_max = type(config.model.sigma_max)(data['sigma_max'])
  config.data.image_size = int(data['image_size'])
  config.data.centered = bool(data['centered'])
  state_dict = {k[len('sd/'):]: data[k] for k in data.files if k.startswith('sd/')}
  return config, state_dict, data


def _params_from_torch(state_dict, config):
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  return ncsnv2.params_from_torch(state_dict, networks.get_model(config), image_shape)


def _apply(config, params, x, labels):
  model = networks.get_model(config)
  return jax.jit(lambda p, x, y: model.apply({'params': p}, x, y, train=False))(params, x, labels)


@functools.lru_cache(maxsize=None)
def _converted(name):
  """(config, params, fixture data, compiled apply) of a fixture; compiled once per module."""
  config, state_dict, data = _fixture(name)
  params = _params_from_torch(state_dict, config)
  model = networks.get_model(config)
  apply = jax.jit(lambda p, x, y: model.apply({'params': p}, x, y, train=False))
  return config, params, data, apply


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_reference(name):
  # The labels span the noise levels, so for NCSNv2 this also checks the division by sigma.
  config, params, data, apply = _converted(name)
  out = np.asarray(apply(params, data['x'], data['labels']))
  ref = data['out']
  assert out.shape == ref.shape
  assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5
  # Every reference tensor became exactly one of our parameters.
  _, state_dict, _ = _fixture(name)
  n_ref = sum(v.size for k, v in state_dict.items() if k != 'sigmas')
  assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == n_ref


def test_converter_accepts_dataparallel_prefix_and_names_problems():
  config, state_dict, _ = _fixture('ncsnv2_64')
  plain = _params_from_torch(state_dict, config)
  prefixed = _params_from_torch({'module.' + k: v for k, v in state_dict.items()}, config)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(jnp.array_equal(a, b)), plain, prefixed))

  missing = dict(state_dict)
  del missing['refine2.msf.convs.1.bias']
  with pytest.raises(ValueError, match='missing refine2/msf/convs_1/bias'):
    _params_from_torch(missing, config)
  wrong = dict(state_dict)
  wrong['end_conv.weight'] = wrong['end_conv.weight'][:, :4]
  with pytest.raises(ValueError, match='end_conv.weight: shape'):
    _params_from_torch(wrong, config)
  extra = dict(state_dict, **{'refine9.crp.convs.0.weight': np.zeros((8, 8, 3, 3))})
  with pytest.raises(ValueError, match='unexpected refine9'):
    _params_from_torch(extra, config)
  config.model.sigma_max = 60  # The checkpoint's sigmas no longer match the config.
  with pytest.raises(ValueError, match='sigmas'):
    _params_from_torch(state_dict, config)


def test_ncsn_depends_on_label_through_conditional_norms():
  config, params, data, apply = _converted('ncsn')
  x = np.repeat(data['x'][:1], 3, axis=0)
  out = np.asarray(apply(params, x, np.array([1, 8, 1])))
  assert np.abs(out[0] - out[1]).max() > 1e-2 * np.abs(out).max()
  np.testing.assert_array_equal(out[0], out[2])
  # The embedding table has one row of (gamma, alpha, beta) per noise level.
  assert params['normalizer']['embed']['embedding'].shape == (10, 3 * config.model.nf)


# Parameter counts of the reference PyTorch networks at the configs' full size.
@pytest.mark.parametrize('path,count', [('ve/ncsnv2/cifar10.py', 29_694_083),
                                        ('ve/ncsnv2/bedroom.py', 83_445_379),
                                        ('ve/ncsn/cifar10.py', 30_117_635)])
def test_parameter_counts(path, count):
  config = load_config(str(ROOT / 'configs' / path))
  params = jax.eval_shape(lambda key: networks.init_model(key, config)[1], jax.random.PRNGKey(0))
  assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == count


def test_bilinear_resize_is_align_corners():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  out = np.asarray(ncsn_layers.resize(jnp.asarray(x), (9, 12)))
  # align_corners=True: output pixel i samples input coordinate i * (n_in - 1) / (n_out - 1).
  rows = np.arange(9) * 4 / 8
  cols = np.arange(12) * 6 / 11
  grid = np.meshgrid(rows, cols, indexing='ij')
  for b in range(2):
    for c in range(3):
      want = scipy.ndimage.map_coordinates(x[b, :, :, c].astype(np.float64), grid, order=1)
      np.testing.assert_allclose(out[b, :, :, c], want, atol=1e-5)


def test_instance_norm_plus_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 5)).astype(np.float32) * 3 + 1
  module = ncsn_layers.InstanceNormPlus()
  params = module.init(jax.random.PRNGKey(0), x)['params']
  out = np.asarray(module.apply({'params': params}, x))
  alpha, gamma, beta = (np.asarray(params[k], np.float64) for k in ('alpha', 'gamma', 'beta'))
  x64 = x.astype(np.float64)
  mu = x64.mean(axis=(1, 2))
  mu_plus = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(mu.var(-1, ddof=1, keepdims=True) + 1e-5)
  h = (x64 - mu[:, None, None]) / np.sqrt(x64.var(axis=(1, 2), keepdims=True) + 1e-5)
  want = gamma * (h + mu_plus[:, None, None] * alpha) + beta
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_output():
  config, params, data, _ = _converted('ncsnv2_64')
  config = config.copy_and_resolve_references()
  config.model.dtype = 'bfloat16'
  out = _apply(config, params, data['x'], data['labels'])
  assert out.dtype == jnp.float32
  ref = data['out']
  assert np.abs(np.asarray(out) - ref).max() / np.abs(ref).max() < 5e-2


def test_registered_names_and_initialization():
  assert {'ncsn', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256'} <= set(models.registered_models())
  # Initialization, on one conditional residual block (the whole network's init compiles slowly).
  block = ncsn_layers.ResidualBlock(16, act=jax.nn.elu, resample='down', num_classes=10)
  params = block.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 16)), jnp.zeros((1,), jnp.int32))
  params = params['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  # PyTorch's initialization: conv weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  kernel = np.asarray(params['conv1']['kernel'])  # [3, 3, 16, 16]
  bound = 1 / np.sqrt(3 * 3 * 16)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  assert abs(kernel.std() - bound / np.sqrt(3)) < 0.1 * bound
  # Conditional InstanceNorm++ rows: gamma, alpha ~ N(1, 0.02), beta = 0.
  table = np.asarray(params['normalize1']['embed']['embedding'])  # [10, 48]
  assert table.shape == (10, 48)
  assert abs(table[:, :32].mean() - 1) < 0.01 and 0.015 < table[:, :32].std() < 0.025
  np.testing.assert_array_equal(table[:, 32:], 0)


def test_bad_configs_raise_clear_errors():
  config = load_config(str(ROOT / 'configs' / 've/ncsnv2/bedroom.py'))
  config.model.name = 'ncsnv2_256'
  config.data.image_size = 36  # Not divisible by the three downsamplings.
  with pytest.raises(ValueError, match='divisible by 8'):
    jax.eval_shape(lambda k: networks.init_model(k, config)[1], jax.random.PRNGKey(0))
  config = load_config(str(ROOT / 'configs' / 've/ncsnv2/cifar10.py'))
  config.model.normalization = 'GroupNorm'
  with pytest.raises(ValueError, match='InstanceNorm\\+\\+'):
    jax.eval_shape(lambda k: networks.init_model(k, config)[1], jax.random.PRNGKey(0))
  config = load_config(str(ROOT / 'configs' / 've/ncsnv2/cifar10.py'))
  config.model.nonlinearity = 'gelu'
  with pytest.raises(ValueError, match='nonlinearity'):
    jax.eval_shape(lambda k: networks.init_model(k, config)[1], jax.random.PRNGKey(0))
  config = load_config(str(ROOT / 'configs' / 've/ncsn/cifar10.py'))
  del config.model['num_classes']  # Untie it from num_scales (a shared reference).
  config.model.num_classes = 7
  with pytest.raises(ValueError, match='num_classes'):
    jax.eval_shape(lambda k: networks.init_model(k, config)[1], jax.random.PRNGKey(0))
