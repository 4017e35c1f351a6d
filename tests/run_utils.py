"""Helpers shared by the tests of training runs (score model and classifier)."""
import jax
import numpy as np


def set_keys(config, overrides: dict):
  """Sets dotted keys of a ConfigDict, e.g. {'training.n_iters': 8}; returns `config`."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return config


def leaves_equal(a, b) -> bool:
  """Bit-for-bit equality of two pytrees of arrays."""
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


# The checkpoints score_sde_pytorch's own training code wrote (tests/fixtures/
# REFERENCE_CHECKPOINTS.md): file -> (config file, overrides, key prefix in
# ref_checkpoints_expected.npz).
_SMALL = {'data.image_size': 8, 'model.nf': 8, 'model.ch_mult': (1, 2),
          'model.num_res_blocks': 1, 'model.attn_resolutions': (4,), 'optim.lr': 0.02,
          'optim.warmup': 2}
REFERENCE_CHECKPOINTS = {
    'ref_ve_ncsnpp.pth': ('configs/ve/cifar10_ncsnpp_continuous.py',
                          dict(_SMALL, **{'model.progressive': 'output_skip',
                                          'model.progressive_input': 'input_skip'}), 've'),
    'ref_ve_ncsnpp_numpy1.pth': ('configs/ve/cifar10_ncsnpp_continuous.py',
                                 dict(_SMALL, **{'model.progressive': 'output_skip',
                                                 'model.progressive_input': 'input_skip'}), 've'),
    'ref_vp_ddpmpp.pth': ('configs/vp/cifar10_ddpmpp_continuous.py', _SMALL, 'vp'),
}


def reference_checkpoint_config(name: str):
  """The config the reference fixture `name` was trained with (its network and SDE)."""
  from configs import load_config
  path, overrides, _ = REFERENCE_CHECKPOINTS[name]
  return set_keys(load_config(path), overrides)


def write_config_file(path, config):
  """A config file whose get_config() returns `config` (for commands that take a file)."""
  with open(path, 'w') as f:
    f.write('import json\n\nimport ml_collections\n\n\ndef get_config():\n'
            f'  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n')
  return str(path)
