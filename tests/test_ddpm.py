"""DDPM U-Net against the reference PyTorch network (fixtures), plus behaviour checks.

Fixtures: tests/fixtures/ddpm_cond.npz (conditional, resampling convs, [0, 1] data) and
ddpm_uncond_centered.npz (unconditional -- the PyTorch port raises for this, the fixture
comes from a locally repaired copy -- average-pool/nearest resampling, centered data,
scale_by_sigma with integer labels). Weights are random, so every layer matters.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scoresde_jax import convert
from scoresde_jax.run import networks

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def net(config):
  """The network of `config` and the shape of one input image, what the converter takes."""
  size = config.data.image_size
  return networks.get_model(config), (size, size, config.data.num_channels)


def load_case(name):
  data = np.load(os.path.join(FIXTURES, name + '.npz'))
  config = ml_collections.ConfigDict(json.loads(str(data['config'])))
  state_dict = {k[len('sd/'):]: data[k] for k in data.files if k.startswith('sd/')}
  return config, state_dict, data['x'], data['labels'], data['out']


@pytest.mark.parametrize('name', ['ddpm_cond', 'ddpm_uncond_centered'])
def test_matches_reference(name):
  config, sd, x, labels, ref = load_case(name)
  params = convert.torch_state_dict_to_params(sd, *net(config))
  model = networks.get_model(config)
  out = jax.jit(lambda p: model.apply({'params': p}, x, labels, train=False))(params)
  assert out.shape == ref.shape and out.dtype == jnp.float32
  assert float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref))) < 1e-5


def test_unconditional_has_no_time_layers():
  config, _, x, labels, _ = load_case('ddpm_uncond_centered')
  model = networks.get_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))
  params = shapes['params']
  assert 'Dense_0' not in params and 'Dense_0' not in params['ResnetBlockDDPM_0']
  assert set(params['ResnetBlockDDPM_0']) == {'GroupNorm_0', 'Conv_0', 'GroupNorm_1', 'Conv_1'}
  assert set(params['AttnBlock_0']) == {'GroupNorm_0', 'NIN_0', 'NIN_1', 'NIN_2', 'NIN_3'}


def test_channels_must_fit_32_groups():
  config, _, x, labels, _ = load_case('ddpm_cond')
  config.model.nf = 16
  model = networks.get_model(config)
  with pytest.raises(ValueError, match='multiple of 32'):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))
