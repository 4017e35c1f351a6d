"""Reading `torch.save` files without torch and without running pickled code.

`load(path)` reads the object a `torch.save` file holds (the zip format of torch >= 1.6 and
the older "legacy" stream format), with every tensor as a numpy array. The pickle is read
by a restricted unpickler that resolves only the handful of globals a training checkpoint
needs (tensor rebuild functions, storage classes, `collections.OrderedDict`, and numpy
scalars of numeric dtypes, which the reference's optimizer state holds: its warm-up writes a
`numpy.float64` learning rate) to numpy reconstructions. Anything else in the pickle (e.g.
`os.system`, `builtins.eval`, arbitrary classes, numpy arrays or object dtypes) raises
`UnsafeCheckpointError` naming the forbidden global, before it is ever called.

  tree = torch_pickle.load('checkpoint_24.pth')      # {'model': {...}, 'step': 3, ...}
  arrays = torch_pickle.flatten(tree)                # {'model.all_modules.0.W': ..., ...}
  arrays = torch_pickle.load_state_dict('net.pth')   # both at once
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from scoresde_jax.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

# Storage classes a pickle may name (as the global `torch.<Name>`, inside the
# persistent id of each storage) and the numpy dtype of their elements.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
try:  # bfloat16 has no numpy dtype; ml_dtypes ships with jax.
  import ml_dtypes
  _STORAGE_DTYPES['BFloat16Storage'] = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover
  pass


class _StorageType:
  """Stands in for `torch.<X>Storage` in the pickle: just carries the dtype."""

  def __init__(self, name: str, dtype):
    self.name = name
    self.dtype = np.dtype(dtype)


class _Storage:
  """A flat numpy array holding one torch storage (all tensors viewing it share it)."""

  def __init__(self, array: np.ndarray):
    self.array = array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """numpy version of `torch._utils._rebuild_tensor_v2`: a strided view, copied."""
  del requires_grad, backward_hooks, metadata  # Autograd state is irrelevant here.
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f'tensor rebuilt from a non-storage object {type(storage)!r}')
  flat = storage.array
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise pickle.UnpicklingError(f'invalid tensor geometry size={size} stride={stride}')
  # Bounds check before as_strided, which would otherwise read out of bounds.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if last >= flat.size:
    raise pickle.UnpicklingError(
        f'tensor of size {size}, stride {stride}, offset {offset} overruns its storage '
        f'of {flat.size} elements')
  if not all(size):
    return np.zeros(size, flat.dtype)
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride),
      writeable=False)
  return np.array(view)  # Own the memory and make it contiguous.


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  """numpy version of `torch._utils._rebuild_parameter(_with_state)`: the data itself."""
  del requires_grad, backward_hooks, state
  return data


# numpy scalars. `pickle.dumps(np.float64(x))` is
#   numpy._core.multiarray.scalar(numpy.dtype('f8', False, True) + BUILD state, raw bytes)
# (`numpy.core.multiarray` under numpy 1.x), and with protocol 2, torch.save's, the raw
# bytes come as `_codecs.encode(text, 'latin1')`. Each step is replaced by a check that lets
# through exactly that shape with a numeric dtype, so no numpy code runs on pickle input.
_NUMERIC_KINDS = 'biufc'
# `np.dtype.__reduce__`'s state for a plain (non-structured, non-subarray) dtype:
# (version, byte order, subarray, names, fields, elsize, alignment, flags).
_PLAIN_DTYPE_STATE = (3, None, None, None, None, -1, -1, 0)


class _DtypeSpec:
  """Stands in for `numpy.dtype(spec, align, copy)` until its BUILD state is checked."""

  def __init__(self, spec, align=False, copy=True):
    del align, copy  # They do not change a numeric dtype.
    if not isinstance(spec, str):
      raise UnsafeCheckpointError(f'Refusing to load: numpy dtype from {type(spec).__name__}.')
    try:
      dtype = np.dtype(spec)
    except TypeError as e:
      raise UnsafeCheckpointError(f'Refusing to load: unknown numpy dtype {spec!r}.') from e
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
      raise UnsafeCheckpointError(
          f'Refusing to load: numpy dtype {spec!r} is not a plain numeric dtype (only bool, '
          'int, uint, float and complex scalars occur in checkpoints).')
    self.dtype = dtype

  def __setstate__(self, state):
    if (not isinstance(state, tuple) or len(state) != len(_PLAIN_DTYPE_STATE)
        or state[1] not in ('<', '>', '|', '=')
        or state[:1] + state[2:] != _PLAIN_DTYPE_STATE[:1] + _PLAIN_DTYPE_STATE[2:]):
      raise UnsafeCheckpointError(f'Refusing to load: numpy dtype state {state!r} is not that '
                                  'of a plain numeric dtype.')
    if state[1] in '<>':
      self.dtype = self.dtype.newbyteorder(state[1])


class _Latin1Bytes(bytes):
  """`_codecs.encode(text, 'latin1')`: the raw bytes of a numpy scalar in a protocol-2 pickle."""


def _codecs_encode(text, encoding):
  if not isinstance(text, str) or encoding != 'latin1':
    raise UnsafeCheckpointError(
        f'Refusing to load: _codecs.encode({type(text).__name__}, {encoding!r}) is not the '
        "bytes of a numpy scalar (text, 'latin1').")
  return _Latin1Bytes(text.encode('latin1'))


def _numpy_scalar(dtype, data):
  if not isinstance(dtype, _DtypeSpec) or not isinstance(data, bytes):
    raise UnsafeCheckpointError('Refusing to load: numpy scalar from '
                                f'({type(dtype).__name__}, {type(data).__name__}), not '
                                '(a numeric dtype, its bytes).')
  if len(data) != dtype.dtype.itemsize:
    raise UnsafeCheckpointError(f'Refusing to load: numpy {dtype.dtype} scalar of '
                                f'{len(data)} bytes (needs {dtype.dtype.itemsize}).')
  return np.frombuffer(bytes(data), dtype.dtype)[0].astype(dtype.dtype.newbyteorder('='))


# The complete list of globals a checkpoint pickle may reference.
_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('numpy', 'dtype'): _DtypeSpec,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,  # numpy >= 2
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,  # numpy 1.x
    ('_codecs', 'encode'): _codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only `_ALLOWED_GLOBALS`, storage classes and dtypes."""

  def __init__(self, file, load_storage, defer_tensors: bool = False):
    super().__init__(file)
    self._load_storage = load_storage
    # Legacy files store the storages' bytes after the pickle: tensors are rebuilt
    # once those are read.
    self._defer_tensors = defer_tensors

  def find_class(self, module, name):
    if self._defer_tensors and (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _DeferredTensor
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    raise UnsafeCheckpointError(
        f'Refusing to load: the checkpoint pickle references the global {module}.{name}, '
        'which a plain tensor state dict never needs (only tensors, storages, '
        'OrderedDict, numeric numpy scalars and builtin containers are allowed). The file '
        'may be malicious, or it holds a whole pickled model or optimizer object rather '
        'than a state dict.')

  def persistent_load(self, pid):
    if self._load_storage is None:
      raise UnsafeCheckpointError(f'Refusing to load: unexpected storage {pid!r}.')
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise UnsafeCheckpointError(f'Refusing to load: unknown persistent id {pid!r}.')
    return self._load_storage(pid)


def _storage_spec(pid) -> tuple[_StorageType, str, int]:
  storage_type, key, numel = pid[1], pid[2], pid[4]  # pid[3]: the device, ignored
  if not isinstance(storage_type, _StorageType):
    raise UnsafeCheckpointError(f'Refusing to load: bad storage type in {pid!r}.')
  return storage_type, str(key), int(numel)


def read_zip_pickle(zf: zipfile.ZipFile, unpickler=None) -> Any:
  """The object of a torch zip archive's `<dir>/data.pkl`, read by `unpickler` (default: the
  restricted one of this module; TorchScript archives subclass it), storages from
  `<dir>/data/<key>`. Stand-ins are left as they are (`_finish` resolves them)."""
  names = zf.namelist()
  pkl = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
  if len(pkl) != 1:
    raise ValueError(f'not a torch zip archive: expected one <dir>/data.pkl, got {pkl}')
  prefix = pkl[0][:-len('data.pkl')]
  byteorder = 'little'
  if prefix + 'byteorder' in names:
    byteorder = zf.read(prefix + 'byteorder').decode().strip()
  cache: dict[str, _Storage] = {}

  def load_storage(pid):
    storage_type, key, numel = _storage_spec(pid)
    if key not in cache:
      raw = zf.read(f'{prefix}data/{key}')
      dtype = storage_type.dtype.newbyteorder('<' if byteorder == 'little' else '>')
      arr = np.frombuffer(raw, dtype=dtype)
      cache[key] = _Storage(arr.astype(arr.dtype.newbyteorder('=')))
    storage = cache[key]
    if storage.array.size < numel:
      raise pickle.UnpicklingError(f'storage {key} is truncated')
    return storage

  with zf.open(pkl[0]) as f:
    return (unpickler or _RestrictedUnpickler)(io.BytesIO(f.read()), load_storage).load()


# Legacy (torch < 1.6 default) stream format: magic, protocol, sys_info pickles, the
# main pickle, a pickled list of storage keys, then per key an int64 element count and
# the raw little-endian bytes.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _load_legacy(f) -> Any:
  def small_pickle():
    # These headers hold only ints and a dict of ints/bools: no storages, no globals.
    return _RestrictedUnpickler(f, None).load()

  magic = small_pickle()
  if magic != _LEGACY_MAGIC:
    raise ValueError('not a torch checkpoint (bad magic number)')
  protocol = small_pickle()
  if protocol != 1001:
    raise ValueError(f'unsupported legacy torch checkpoint protocol {protocol}')
  sys_info = small_pickle()
  if not isinstance(sys_info, dict):
    raise ValueError(f'bad legacy torch checkpoint header {sys_info!r}')
  if not sys_info.get('little_endian', True):
    raise ValueError('big-endian legacy torch checkpoints are not supported')
  storages: dict[str, tuple[_StorageType, int, _Storage]] = {}
  views = []

  def load_storage(pid):
    storage_type, key, numel = _storage_spec(pid)
    if key not in storages:
      storages[key] = (storage_type, numel, _Storage(np.empty(0, storage_type.dtype)))
    view_metadata = pid[5] if len(pid) > 5 else None
    if view_metadata is not None:  # A view into the root storage (very old files).
      _view_key, offset, view_size = view_metadata
      view = _Storage(np.empty(0, storage_type.dtype))
      views.append((view, key, int(offset), int(view_size)))
      return view
    return storages[key][2]

  result = _RestrictedUnpickler(f, load_storage, defer_tensors=True).load()
  keys = _RestrictedUnpickler(f, None).load()
  for key in keys:
    key = str(key)
    if key not in storages:
      raise pickle.UnpicklingError(f'storage {key} listed but never referenced')
    storage_type, numel, storage = storages[key]
    (count,) = struct.unpack('<q', f.read(8))
    nbytes = count * storage_type.dtype.itemsize
    raw = f.read(nbytes)
    if len(raw) != nbytes:
      raise pickle.UnpicklingError(f'storage {key} is truncated')
    storage.array = np.frombuffer(raw, storage_type.dtype).copy()
  for view, key, offset, view_size in views:
    view.array = storages[key][2].array[offset:offset + view_size]
  # Tensors were deferred during `load`: their storages are filled only now.
  return _finish(result)


class _DeferredTensor:
  """A tensor whose storage bytes come later in a legacy stream."""

  def __init__(self, *args):
    self.args = args


def _finish(obj):
  """The loaded tree with stand-ins resolved: deferred tensors built, dtypes as `np.dtype`.

  Bytes from `_codecs.encode` that did not become a numpy scalar are refused here.
  """
  if isinstance(obj, _DeferredTensor):
    return _rebuild_tensor_v2(*obj.args)
  if isinstance(obj, _DtypeSpec):
    return obj.dtype
  if isinstance(obj, _Latin1Bytes):
    raise UnsafeCheckpointError('Refusing to load: _codecs.encode used outside a numpy scalar.')
  if isinstance(obj, dict):
    return type(obj)((_finish(k), _finish(v)) for k, v in obj.items())
  if isinstance(obj, list):
    return [_finish(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_finish(v) for v in obj)
  return obj


def load(path: str | os.PathLike) -> Any:
  """The object a `torch.save` file holds, tensors as numpy arrays; nothing is executed.

  Args:
    path: a `.pth`/`.pt` file written by `torch.save` (zip format, torch >= 1.6, or the
      legacy stream format).

  Returns:
    The saved tree of dicts (`OrderedDict` stays one), lists, tuples and scalars, with
    every tensor as a numpy array of its dtype (float32/float16/bfloat16/float64/int*/
    uint8/bool) and logical shape; strided and offset views are materialized as
    contiguous copies.

  Raises:
    CheckpointNotFoundError (a FileNotFoundError): `path` does not exist.
    UnsafeCheckpointError: the pickle references a global other than tensors, storages,
      `OrderedDict` and numeric numpy scalars (its name is in the message); nothing from the
      pickle is executed.
    CheckpointError (a ValueError): the file is not a torch checkpoint, or a damaged one.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointNotFoundError(f'No checkpoint file at {path!r}.')
  try:
    if _starts_as_zip(path):  # a truncated zip fails in ZipFile with a clear reason
      with zipfile.ZipFile(path) as zf:
        return _finish(read_zip_pickle(zf))
    with open(path, 'rb') as f:
      return _load_legacy(f)
  except UnsafeCheckpointError:
    raise
  # What a damaged or foreign file makes the readers raise.
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, IndexError, ValueError,
          struct.error, zipfile.BadZipFile) as e:
    raise CheckpointError(f'{path!r} is not a readable torch checkpoint ({e}); a download that '
                          'stopped early, or not a torch.save file.') from e


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """The arrays of a `load`ed tree by name: nested keys joined by '.' (list items by index).

  In file order. Leaves that are not arrays (ints, strings: metadata such as the step)
  are dropped.
  """
  out: dict[str, np.ndarray] = {}

  def visit(node, prefix: str):
    if isinstance(node, np.ndarray):
      out[prefix] = node
    elif isinstance(node, dict):
      for k, v in node.items():
        visit(v, f'{prefix}.{k}' if prefix else str(k))
    elif isinstance(node, (list, tuple)):
      for i, v in enumerate(node):
        visit(v, f'{prefix}.{i}' if prefix else str(i))

  visit(tree, '')
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """`flatten(load(path))`: a state dict (or nested dicts/lists of them) as `{name: array}`.

  E.g. `{'model': state_dict, 'step': 10}` gives `{'model.<key>': ...}`. Raises as `load`.
  """
  return flatten(load(path))


def _starts_as_zip(path: str) -> bool:
  """A zip archive's first local header: also there when a download stopped early and the
  archive's directory at its end is missing."""
  with open(path, 'rb') as f:
    return f.read(4) == b'PK\x03\x04' or zipfile.is_zipfile(path)


def is_torch_file(path: str | os.PathLike) -> bool:
  """True for a `torch.save` file (zip archive or legacy pickle stream), False otherwise.

  Decided by the content, not the name: the original JAX release names its msgpack
  checkpoints `checkpoint_<n>` without an extension.

  Raises:
    FileNotFoundError: `path` does not exist.
  """
  path = os.fspath(path)
  if _starts_as_zip(path):
    return True
  with open(path, 'rb') as f:
    head = f.read(2)
  # The legacy torch format starts with a pickle: PROTO opcode 0x80 and protocol 2..5.
  # (A msgpack dict starts with a non-empty map, 0x81..0x8f or 0xde/0xdf.)
  return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
