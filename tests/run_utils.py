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
