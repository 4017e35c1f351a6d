"""The architecture registry, typed network fields and score functions as values."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import load_config
from scoresde_jax import errors, models, sde_lib
from scoresde_jax.models import ddpm
from scoresde_jax.run import networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_ddpm():
  return ddpm.DDPM(nf=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(),
                   dropout=0.0, resamp_with_conv=False, conditional=True,
                   scale_by_sigma=False, nonlinearity='swish', centered=False)


def test_equal_networks_share_one_compilation_of_a_score_fn():
  sde = sde_lib.VPSDE(0.1, 20.0, 1000)
  model_a, model_b = _small_ddpm(), _small_ddpm()
  assert model_a is not model_b and model_a == model_b
  params_a = models.init_params(model_a, jax.random.PRNGKey(0), (4, 4, 3))
  params_b = models.init_params(model_b, jax.random.PRNGKey(1), (4, 4, 3))
  traces = []

  @jax.jit
  def apply(score_fn, x, t):
    traces.append(None)  # Runs once per trace, not per call.
    return score_fn(x, t)

  x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 3))
  t = jnp.array([0.3, 0.7])
  out_a = apply(models.get_score_fn(sde, model_a, params_a, continuous=True), x, t)
  out_b = apply(models.get_score_fn(sde, model_b, params_b, continuous=True), x, t)
  assert len(traces) == 1
  assert not np.allclose(out_a, out_b)
  np.testing.assert_allclose(
      out_a, models.ScoreFn(sde, model_a, True)(params_a, x, t), rtol=1e-5, atol=1e-5)


def test_registry_has_every_architecture_and_no_config():
  assert {'ncsnpp', 'ddpm', 'ncsn', 'ncsnv2_64', 'ncsnv2_128',
          'ncsnv2_256'} <= set(models.registered_models())
  assert models.get_architecture('ddpm') is ddpm.DDPM
  with pytest.raises(ValueError, match='Unknown model name'):
    models.get_architecture('unet9000')
  fields = {f.name for f in dataclasses.fields(ddpm.DDPM)}
  assert 'config' not in fields and {'nf', 'centered', 'dtype'} <= fields


def test_invalid_field_raises_field_error():
  with pytest.raises(errors.ArgumentError, match='nonlinearity') as info:
    dataclasses.replace(_small_ddpm(), nonlinearity='tanh')
  assert info.value.argument == 'nonlinearity'


def _digits_config():
  return load_config(os.path.join(ROOT, 'configs/ve/digits.py'))


def test_run_layer_names_the_config_key():
  config = _digits_config()
  config.model.name = 'unet9000'
  with pytest.raises(errors.ConfigError, match=r'Unknown model name .* \(config\.model\.name\)'):
    networks.get_model(config)
  config = _digits_config()
  del config.model['nf']
  with pytest.raises(errors.ConfigError, match=r'config\.model\.nf is required'):
    networks.get_model(config)
  config = _digits_config()
  config.model.progressive = 'sideways'
  with pytest.raises(errors.ConfigError, match=r'^config\.model\.progressive must be one of'):
    networks.get_model(config)
  config = _digits_config()
  assert isinstance(config.model.fir_kernel, list)  # Becomes a tuple: networks stay hashable.
  assert hash(networks.get_model(config)) == hash(networks.get_model(config))
