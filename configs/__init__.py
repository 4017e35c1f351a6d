"""Training configs (ml_collections), laid out and named as in the paper's reference code.

`configs/<sde>/<name>.py` each define `get_config() -> ml_collections.ConfigDict`. They import
their defaults as `configs.default_*_configs`, so the repository root must be importable
(it is when running from the root, as `main.py` and the tests do; `load_config` ensures it).
"""
from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str) -> ml_collections.ConfigDict:
  """Loads the config file at `path` (e.g. 'configs/ve/cifar10.py') and returns its config.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: `path` is not a .py file, or the module defines no callable `get_config`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Config file not found: {path!r}.')
  if not path.endswith('.py'):
    raise ValueError(f'A config file is a Python file ending in .py; got {path!r}.')
  # The configs import `configs.default_*_configs`: the repository root has to be importable.
  if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
  stem = os.path.splitext(os.path.abspath(path))[0]
  name = '_config_' + stem.replace(os.sep, '_').replace('.', '_')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ValueError(f'Config file {path!r} defines no get_config() function.')
  config = get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f'get_config() of {path!r} returned {type(config).__name__}, '
                     'not an ml_collections.ConfigDict.')
  return config
