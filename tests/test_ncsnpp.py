"""NCSN++ / DDPM++ against the reference PyTorch network (fixtures), plus behaviour checks.

Fixtures (tests/fixtures/ncsnpp_*.npz) hold a randomly initialized reference state dict
(every parameter randomized, so every branch contributes), inputs, labels and the
reference output in eval mode, for small networks covering: FIR on/off, each progressive
and progressive_input mode, sum/cat combine, BigGAN and DDPM blocks, Fourier and
positional embeddings (float and integer labels), conditional on/off, scale_by_sigma,
centered on/off, skip_rescale on/off, init_scale, and every nonlinearity.
"""
import glob
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scoresde_jax import convert
from scoresde_jax.models import layers
from scoresde_jax.run import networks

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
CASES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(FIXTURES, 'ncsnpp_*.npz')))


def net(config):
  """The network of `config` and the shape of one input image, what the converter takes."""
  size = config.data.image_size
  return networks.get_model(config), (size, size, config.data.num_channels)


def load_case(name):
  data = np.load(os.path.join(FIXTURES, name + '.npz'))
  config = ml_collections.ConfigDict(json.loads(str(data['config'])))
  state_dict = {k[len('sd/'):]: data[k] for k in data.files if k.startswith('sd/')}
  return config, state_dict, data['x'], data['labels'], data['out']


def rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def test_fixture_set_is_complete():
  assert len(CASES) == 8, CASES


@pytest.mark.parametrize('name', CASES)
def test_matches_reference(name):
  config, sd, x, labels, ref = load_case(name)
  params = convert.torch_state_dict_to_params(sd, *net(config))
  model = networks.get_model(config)
  out = jax.jit(lambda p, x, y: model.apply({'params': p}, x, y, train=False))(params, x, labels)
  assert out.shape == ref.shape and out.dtype == jnp.float32
  assert rel_err(out, ref) < 1e-5


def _small_config(**model):
  config, _, _, _, _ = load_case('ncsnpp_ve_outskip')
  config.model.update(model)
  return config


def _trace_init(config):
  # Shapes only: config errors surface while tracing, no computation needed.
  model = networks.get_model(config)
  s = config.data.image_size
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)),
                                           jnp.ones((1,)), train=False))


def test_bfloat16_compute_keeps_float32_params_and_output():
  config, sd, x, labels, ref = load_case('ncsnpp_vp_residual')
  params = convert.torch_state_dict_to_params(sd, *net(config))
  config.model.dtype = 'bfloat16'
  model = networks.get_model(config)
  out = jax.jit(lambda p: model.apply({'params': p}, x, labels, train=False))(params)
  assert out.dtype == jnp.float32
  err = rel_err(out, ref)
  assert 1e-5 < err < 0.1  # bf16 rounding is visible but the function is the same
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))


def test_dropout_uses_rng_in_training_only():
  config, sd, x, labels, ref = load_case('ncsnpp_ddpmblock_naive_inskip')  # dropout 0.1
  params = convert.torch_state_dict_to_params(sd, *net(config))
  model = networks.get_model(config)
  f = jax.jit(lambda rng: model.apply({'params': params}, x, labels, train=True,
                                      rngs={'dropout': rng}))
  a, b, c = f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert rel_err(a, ref) > 1e-3  # eval mode (the reference output) has no dropout


def test_default_init_variance():
  # DDPM init: uniform variance scaling, variance = scale / fan_avg; scale 0 means 1e-10
  # (so output layers start near zero without being exactly zero).
  shape = (3, 3, 16, 32)
  fan_avg = 9 * (16 + 32) / 2
  for scale in (1., 0.):
    w = layers.default_init(scale)(jax.random.PRNGKey(0), shape)
    want = np.sqrt((scale or 1e-10) / fan_avg)
    assert abs(float(jnp.std(w)) / want - 1) < 0.05
    assert float(jnp.max(jnp.abs(w))) <= want * np.sqrt(3) * 1.0001  # uniform support


def test_reference_module_names():
  # Names of the original Flax model, so its checkpoints load without renaming.
  shapes = _trace_init(_small_config())['params']
  assert {'GaussianFourierProjection_0', 'Dense_0', 'Dense_1', 'Conv_0', 'AttnBlockpp_0',
          'ResnetBlockBigGANpp_0', 'Combine_0', 'GroupNorm_0'} <= set(shapes)
  assert set(shapes['ResnetBlockBigGANpp_1']) == {'GroupNorm_0', 'Conv_0', 'Dense_0',
                                                   'GroupNorm_1', 'Conv_1', 'Conv_2'}
  assert set(shapes['AttnBlockpp_0']) == {'GroupNorm_0', 'NIN_0', 'NIN_1', 'NIN_2', 'NIN_3'}
  assert set(shapes['AttnBlockpp_0']['NIN_0']) == {'W', 'b'}


@pytest.mark.parametrize('key,value', [('progressive', 'bogus'), ('progressive_input', 'x'),
                                       ('embedding_type', 'learned'), ('resblock_type', 'vit'),
                                       ('progressive_combine', 'mul'), ('dtype', 'float16'),
                                       ('nonlinearity', 'tanh'), ('attention_type', 'flash')])
def test_bad_config_values_raise(key, value):
  config = _small_config(**{key: value})
  with pytest.raises(ValueError, match=key):
    _trace_init(config)


def test_bad_image_size_raises():
  config = _small_config()
  config.data.image_size = 6  # three levels need a multiple of 4
  with pytest.raises(ValueError, match='divisible'):
    _trace_init(config)
