"""Reading the tensors of a TorchScript archive (`torch.jit.save`) without torch or running code.

A TorchScript archive is a zip like a `torch.save` file: `<prefix>/data.pkl` pickles the
module tree, whose tensors live in `<prefix>/data/<key>`, next to `<prefix>/code/` (the
TorchScript source, never read here) and `<prefix>/constants.pkl`. Each module of the tree is
pickled as an instance of a class of the `__torch__` namespace (`__torch__.inceptionv3.
Conv2dLayer`, `__torch__.torch.nn.modules.container.___torch_mangle_9.Sequential`, ...)
built from an empty `NEWOBJ` and a `BUILD` with the dict of its attributes.

`load(path)` reads that pickle with `torch_pickle`'s restricted unpickler, extended by
exactly two things: every class under `__torch__` becomes a `ScriptObject` that only holds
its attribute dict (no code of the archive is looked up or run), and
`torch.jit._pickle.build_{int,double,bool}list` (how TorchScript pickles `List[int]`
attributes such as a conv's padding) build plain lists of checked elements. Any other global
still raises `UnsafeCheckpointError` naming it. `tensors(path)` lists the archive's tensors
by their dotted attribute path (`net.layers.mixed.tower.conv.weight`), in file order.
"""
from __future__ import annotations

import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from scoresde_jax import torch_pickle
from scoresde_jax.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

_TORCH_NAMESPACE = '__torch__'
# torch_pickle's post-processing of stand-ins (dtypes, deferred tensors).
# pylint: disable=protected-access
_finish_value = torch_pickle._finish
# pylint: enable=protected-access


class ScriptObject:
  """A TorchScript module (or other `__torch__` class) of an archive: name and attributes.

  `qualified_name` is the pickled class name (e.g. `__torch__.inceptionv3.Conv2dLayer`),
  `attributes` the dict the archive's `BUILD` set (submodules, tensors as numpy arrays,
  ints, lists, ...). Each class name of an archive is a subclass made by `_script_class`.
  """
  qualified_name = _TORCH_NAMESPACE

  def __new__(cls, *args, **kwargs):
    # NEWOBJ passes no arguments for a TorchScript module; anything else is not one.
    if cls is ScriptObject or args or kwargs:
      raise UnsafeCheckpointError(
          f'Refusing to load: {cls.qualified_name} is constructed with arguments; a '
          'TorchScript module is pickled as an empty object and its attributes.')
    obj = super().__new__(cls)
    obj.attributes = None
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs  # Checked in __new__.

  def __setstate__(self, state):
    # The pickle's BUILD: a TorchScript module's state is the dict of its attributes.
    if self.attributes is not None:
      raise UnsafeCheckpointError(f'Refusing to load: {self.qualified_name} is built twice.')
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
      raise UnsafeCheckpointError(
          f'Refusing to load: {self.qualified_name} has state of type '
          f'{type(state).__name__}, not a dict of named attributes.')
    self.attributes = dict(state)

  def __repr__(self):
    return f'ScriptObject({self.qualified_name})'


def _script_class(qualified_name: str) -> type:
  """A class standing for the archive's `qualified_name`: a name, no behaviour of its own."""
  return type('ScriptObject', (ScriptObject,), {'qualified_name': qualified_name})


def _typed_list(kind: type, name: str):
  def build(values):
    if (not isinstance(values, list)
        or not all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
                   for v in values)):
      raise UnsafeCheckpointError(
          f'Refusing to load: torch.jit._pickle.{name} of {values!r}, not a list of '
          f'{kind.__name__}.')
    return list(values)
  return build


# What TorchScript pickles besides the globals `torch_pickle` allows.
_LIST_BUILDERS = {
    'build_intlist': _typed_list(int, 'build_intlist'),
    'build_doublelist': _typed_list(float, 'build_doublelist'),
    'build_boollist': _typed_list(bool, 'build_boollist'),
}


class _ScriptUnpickler(torch_pickle._RestrictedUnpickler):  # pylint: disable=protected-access
  """`torch_pickle`'s unpickler plus `__torch__` classes (as `ScriptObject`s) and list builders."""

  def __init__(self, file, load_storage):
    super().__init__(file, load_storage)
    self._classes: dict[str, type] = {}

  def find_class(self, module, name):
    if module == _TORCH_NAMESPACE or module.startswith(_TORCH_NAMESPACE + '.'):
      qualified = f'{module}.{name}'
      if qualified not in self._classes:
        self._classes[qualified] = _script_class(qualified)
      return self._classes[qualified]
    if module == 'torch.jit._pickle' and name in _LIST_BUILDERS:
      return _LIST_BUILDERS[name]
    return super().find_class(module, name)


def is_torchscript(path: str | os.PathLike) -> bool:
  """True for a TorchScript archive (a zip with `<prefix>/code/` or `<prefix>/constants.pkl`).

  A `torch.save` zip has neither. Decided by the content, not the file name.
  """
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    return False
  try:
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
  except (zipfile.BadZipFile, OSError):
    return False  # Damaged: the torch.save reader says why.
  for n in names:
    parts = n.split('/')
    if len(parts) >= 2 and (parts[1] == 'code' or parts[1:] == ['constants.pkl']):
      return True
  return False


def _finish(obj, active: set[int], done: dict[int, Any]):
  """`torch_pickle._finish` applied inside `ScriptObject`s too; refuses cycles.

  An object the pickle references twice (memo) is finished once and shared.
  """
  if not isinstance(obj, (ScriptObject, list, tuple, dict)):
    return _finish_value(obj)
  key = id(obj)
  if key in done:
    return done[key]
  if key in active:
    raise ValueError(f'{type(obj).__name__} of the archive contains itself')
  active.add(key)
  if isinstance(obj, ScriptObject):
    if obj.attributes is None:
      raise UnsafeCheckpointError(f'Refusing to load: {obj.qualified_name} has no state.')
    obj.attributes = {k: _finish(v, active, done) for k, v in obj.attributes.items()}
    result = obj
  elif isinstance(obj, dict):
    result = type(obj)((_finish(k, active, done), _finish(v, active, done))
                       for k, v in obj.items())
  else:
    result = type(obj)(_finish(v, active, done) for v in obj)
  active.discard(key)
  done[key] = result
  return result


def load(path: str | os.PathLike) -> Any:
  """The module tree of a TorchScript archive: `ScriptObject`s, tensors as numpy arrays.

  Nothing of the archive is executed and its code is not read.

  Raises:
    CheckpointNotFoundError (a FileNotFoundError): `path` does not exist.
    UnsafeCheckpointError: the pickle references a global outside `__torch__` other than
      those `torch_pickle` allows and TorchScript's list builders (named in the message),
      or a `__torch__` object is not an empty object plus a dict of attributes.
    CheckpointError (a ValueError): `path` is not a readable TorchScript archive.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointNotFoundError(f'No TorchScript file at {path!r}.')
  try:
    with zipfile.ZipFile(path) as zf:
      return _finish(torch_pickle.read_zip_pickle(zf, _ScriptUnpickler), set(), {})
  except UnsafeCheckpointError:
    raise
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, IndexError, ValueError,
          AttributeError, RecursionError, struct.error, zipfile.BadZipFile) as e:
    raise CheckpointError(f'{path!r} is not a readable TorchScript archive ({e}).') from e


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """The arrays of a `load`ed tree by dotted attribute path, in file order.

  Attributes that are not arrays or `ScriptObject`s (flags, strides, paddings) are dropped.
  """
  out: dict[str, np.ndarray] = {}

  def visit(node, prefix):
    if isinstance(node, np.ndarray):
      out[prefix] = node
    elif isinstance(node, ScriptObject):
      for k, v in node.attributes.items():
        visit(v, f'{prefix}.{k}' if prefix else k)

  visit(tree, '')
  return out


def tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """`flatten(load(path))`: `{'net.layers.conv.weight': array, ...}`. Raises as `load`."""
  return flatten(load(path))
