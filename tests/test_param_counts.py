"""Exact parameter counts of the paper's networks, as measured on the reference.

Counted from shapes only (`jax.eval_shape` of `init`), so no memory or compute is spent.
The counts include the fixed Fourier-feature frequencies `W` (a parameter in both
references). Reference numbers: score_sde / score_sde_pytorch networks built from the same
configs (the unconditional DDPM count is that of the original Flax model; the PyTorch port
fails to build it).
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import load_config
from scoresde_jax.run import networks

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'

REFERENCE_COUNTS = {
    've/cifar10_ncsnpp_continuous.py': 62_758_915,
    've/cifar10_ncsnpp_deep_continuous.py': 107_587_075,
    've/cifar10_ncsnpp.py': 62_693_251,
    'vp/cifar10_ddpmpp.py': 61_804_419,
    'vp/cifar10_ddpmpp_continuous.py': 61_804_419,
    'vp/cifar10_ddpmpp_deep_continuous.py': 106_632_579,
    'subvp/cifar10_ddpmpp_deep_continuous.py': 106_632_579,
    'vp/ddpm/cifar10.py': 35_218_947,
    'vp/ddpm/cifar10_unconditional.py': 32_329_347,
    'vp/ddpm/bedroom.py': 111_569_923,
    've/ffhq_256_ncsnpp_continuous.py': 65_574_549,
    've/ffhq_ncsnpp_continuous.py': 105_785_896,
}


def count_params(config) -> int:
  """Number of scalar parameters of `get_model(config)`, from shapes only."""
  model = networks.get_model(config)
  size, channels = config.data.image_size, config.data.num_channels

  def init():
    return model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                      jnp.zeros((1, size, size, channels)), jnp.ones((1,)), train=False)

  shapes = jax.eval_shape(init)['params']
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize('name', sorted(REFERENCE_COUNTS))
def test_parameter_count(name):
  config = load_config(str(CONFIG_DIR / name))
  assert count_params(config) == REFERENCE_COUNTS[name]
