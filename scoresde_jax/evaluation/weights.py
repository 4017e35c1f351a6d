"""Reading PyTorch checkpoints without torch, and the FID Inception weights.

`load_torch_state_dict(path)` reads a `torch.save` file (the zip format of torch >= 1.6
and the older "legacy" stream format) into `{name: np.ndarray}` WITHOUT importing torch
and without running pickled code: the pickle is read by a restricted unpickler that
resolves only the handful of globals a state dict needs (tensor rebuild functions,
storage classes, `collections.OrderedDict`) to numpy reconstructions. Anything else in
the pickle (e.g. `os.system`, `builtins.eval`, arbitrary classes) raises
`UnsafeCheckpointError` naming the forbidden global, before it is ever called.

The Inception weights are pytorch-fid's port of TF's 2015-12-05 graph
(`pt_inception-2015-12-05-6726825d.pth`). They are looked up, in order, at an explicit
path, at `$SCORESDE_INCEPTION_WEIGHTS`, and in `~/.cache/scoresde_jax/`; the converted
Flax variables are cached as `.npz` (plain arrays, read with `allow_pickle=False`).
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

INCEPTION_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                         'fid_weights/pt_inception-2015-12-05-6726825d.pth')
INCEPTION_WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
# torch.hub convention: the file name carries the first hex digits of its sha256.
INCEPTION_WEIGHTS_SHA256_PREFIX = '6726825d'
INCEPTION_WEIGHTS_ENV = 'SCORESDE_INCEPTION_WEIGHTS'
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'scoresde_jax')
# Bump when the converted layout changes, so stale caches are not reused.
_CACHE_VERSION = 1


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A checkpoint's pickle references a global that a plain state dict never needs."""


# ---------------------------------------------------------------------------
# Safe torch.save reader.
# ---------------------------------------------------------------------------

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


# The complete list of globals a state-dict pickle may reference.
_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
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
        'OrderedDict and builtin containers are allowed). The file may be malicious, or '
        'it holds a whole pickled model or optimizer object rather than a state dict.')

  def persistent_load(self, pid):
    if self._load_storage is None:
      raise UnsafeCheckpointError(f'Refusing to load: unexpected storage {pid!r}.')
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise UnsafeCheckpointError(f'Refusing to load: unknown persistent id {pid!r}.')
    return self._load_storage(pid)


def _storage_spec(pid) -> tuple[_StorageType, str, int]:
  storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
  if not isinstance(storage_type, _StorageType):
    raise UnsafeCheckpointError(f'Refusing to load: bad storage type in {pid!r}.')
  return storage_type, str(key), int(numel)


def _load_zip(zf: zipfile.ZipFile) -> Any:
  names = zf.namelist()
  pkl = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
  if len(pkl) != 1:
    raise ValueError(f'not a torch zip checkpoint: expected one <dir>/data.pkl, got {pkl}')
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
    return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


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
  return _materialize(result)


class _DeferredTensor:
  """A tensor whose storage bytes come later in a legacy stream."""

  def __init__(self, *args):
    self.args = args


def _materialize(obj):
  if isinstance(obj, _DeferredTensor):
    return _rebuild_tensor_v2(*obj.args)
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, list):
    return [_materialize(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialize(v) for v in obj)
  return obj


def _flatten(obj, prefix: str, out: dict[str, np.ndarray]):
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      _flatten(v, f'{prefix}.{k}' if prefix else str(k), out)
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _flatten(v, f'{prefix}.{i}' if prefix else str(i), out)
  # Scalars and strings (e.g. metadata, epoch counters) carry no tensors: dropped.


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads tensors from a `torch.save` file without torch and without running code.

  Args:
    path: a `.pth`/`.pt` file written by `torch.save` (zip format, torch >= 1.6, or the
      legacy stream format). The saved object may be a state dict or nested
      dicts/lists/tuples of tensors (e.g. `{'model': state_dict, 'step': 10}`).

  Returns:
    `{name: np.ndarray}` with nested keys joined by '.' (list items by index), in file
    order. Non-tensor leaves (ints, strings) are dropped. Arrays keep their dtype
    (float32/float16/bfloat16/float64/int*/uint8/bool) and logical shape; strided
    and offset views are materialized as contiguous copies.

  Raises:
    FileNotFoundError: `path` does not exist.
    UnsafeCheckpointError: the pickle references any other global (its name is in the
      message); nothing from the pickle is executed.
    ValueError: the file is not a torch checkpoint.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No checkpoint file at {path!r}.')
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      obj = _load_zip(zf)
  else:
    with open(path, 'rb') as f:
      obj = _load_legacy(f)
  out: dict[str, np.ndarray] = {}
  _flatten(obj, '', out)
  return out


# ---------------------------------------------------------------------------
# FID Inception: torch state dict -> Flax variables, file lookup and cache.
# ---------------------------------------------------------------------------

# torch BatchNorm2d / Linear / Conv2d leaf names -> (Flax collection, leaf name).
_LEAF_MAP = {
    'bn.weight': ('params', 'scale'),
    'bn.bias': ('params', 'bias'),
    'bn.running_mean': ('batch_stats', 'mean'),
    'bn.running_var': ('batch_stats', 'var'),
    'conv.weight': ('params', 'kernel'),
    'fc.weight': ('params', 'kernel'),
    'fc.bias': ('params', 'bias'),
}


def convert_torch_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """pytorch-fid FID Inception state dict -> `{'params': ..., 'batch_stats': ...}`.

  Conv kernels [O, I, kh, kw] become [kh, kw, I, O]; the fc weight [1008, 2048]
  becomes [2048, 1008]; BatchNorm weight/bias/running_mean/running_var become
  scale/bias/mean/var. `num_batches_tracked` entries and the unused aux classifier
  (`AuxLogits.*`, absent from pytorch-fid's file) are ignored. The result is checked
  against `InceptionV3`'s variable tree: missing, unexpected or mis-shaped entries
  raise ValueError naming them. Leaves are float32 numpy arrays.
  """
  from scoresde_jax.evaluation import inception  # Heavy (jax); only needed here.

  tree: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  unexpected = []
  for key, value in state_dict.items():
    if key.endswith('num_batches_tracked') or key.startswith('AuxLogits.'):
      continue
    parts = key.split('.')
    leaf = '.'.join(parts[-2:])
    if leaf not in _LEAF_MAP or (leaf.startswith('fc.') and len(parts) != 2):
      unexpected.append(key)
      continue
    collection, name = _LEAF_MAP[leaf]
    value = np.asarray(value, np.float32)
    if name == 'kernel':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    node = tree[collection]
    module_path = parts[:-1] if leaf.startswith('fc.') else parts[:-2] + [parts[-2]]
    for p in module_path:
      node = node.setdefault(p, {})
    node[name] = np.ascontiguousarray(value)

  expected = _flat_shapes(inception.variable_shapes())
  got = _flat_shapes(tree)
  missing = sorted(set(expected) - set(got))
  unexpected += sorted(set(got) - set(expected))
  wrong = [f'{k}: expected {expected[k]}, got {got[k]}'
           for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
  if missing or unexpected or wrong:
    raise ValueError(
        'state dict does not match the FID Inception-v3 (pytorch-fid '
        f'{INCEPTION_WEIGHTS_FILENAME}): missing {missing[:8]}{"..." if len(missing) > 8 else ""}'
        f' ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)}), '
        f'wrong shapes {wrong[:8]} ({len(wrong)}).')
  return tree


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  out = {}

  def visit(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(v, f'{prefix}/{k}' if prefix else k)
    else:
      out[prefix] = tuple(node.shape)

  visit(dict(tree), '')
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _flat_arrays(tree) -> dict[str, np.ndarray]:
  out = {}

  def visit(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(v, f'{prefix}/{k}' if prefix else k)
    else:
      out[prefix] = np.asarray(node)

  visit(dict(tree), '')
  return out


def _missing_weights_message(tried: list[str]) -> str:
  return (
      'FID Inception weights not found. Looked for: ' + ', '.join(repr(t) for t in tried)
      + '. Download pytorch-fid\'s port of the TF 2015-12-05 Inception graph from\n  '
      + INCEPTION_WEIGHTS_URL + '\nand either pass its path explicitly (weights_path=... / '
      f'--inception_weights), set the environment variable {INCEPTION_WEIGHTS_ENV} to it, '
      f'or put it at {os.path.join(DEFAULT_CACHE_DIR, INCEPTION_WEIGHTS_FILENAME)} '
      '(`scoresde_jax.evaluation.weights.download_inception_weights()` does that).')


def resolve_inception_weights_path(weights_path: str | os.PathLike | None = None) -> str:
  """Where the `.pth` is: `weights_path`, else `$SCORESDE_INCEPTION_WEIGHTS`, else
  `~/.cache/scoresde_jax/pt_inception-2015-12-05-6726825d.pth`.

  Raises FileNotFoundError (saying where to download it and where to put it) when the
  chosen location has no file.
  """
  if weights_path is not None:
    candidate = os.path.expanduser(os.fspath(weights_path))
  elif os.environ.get(INCEPTION_WEIGHTS_ENV):
    candidate = os.path.expanduser(os.environ[INCEPTION_WEIGHTS_ENV])
  else:
    candidate = os.path.expanduser(os.path.join(DEFAULT_CACHE_DIR, INCEPTION_WEIGHTS_FILENAME))
  if not os.path.isfile(candidate):
    raise FileNotFoundError(_missing_weights_message([candidate]))
  return candidate


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def load_inception(weights_path: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   verify_hash: bool = True) -> dict[str, Any]:
  """FID Inception variables `{'params': ..., 'batch_stats': ...}` (numpy float32).

  Args:
    weights_path: pytorch-fid's `.pth`; default `$SCORESDE_INCEPTION_WEIGHTS` or
      `~/.cache/scoresde_jax/pt_inception-2015-12-05-6726825d.pth`.
    cache_dir: where converted `.npz` files are written / read (default
      `~/.cache/scoresde_jax`). Cache files are named by the sha256 of the `.pth` they
      came from, so a different file never picks up a stale conversion. When no `.pth`
      is found at the default locations but a cached conversion of the official file
      is, that is used.
    verify_hash: check the sha256 prefix `6726825d` of the official file (only when
      the file has the official name; renamed files are trusted).

  Raises:
    FileNotFoundError: no weights file (message says where to get and put it).
    ValueError: the file's hash or contents are not those of the FID Inception.
  """
  cache_dir = os.path.expanduser(os.fspath(cache_dir if cache_dir is not None
                                           else DEFAULT_CACHE_DIR))
  try:
    path = resolve_inception_weights_path(weights_path)
  except FileNotFoundError:
    official = _cache_file(cache_dir, INCEPTION_WEIGHTS_SHA256_PREFIX)
    if weights_path is None and os.path.isfile(official):
      return _read_cache(official)  # Only the converted official file is around.
    raise
  digest = _sha256(path)  # ~0.3 s for the 92 MB file; keys the cache.
  if (verify_hash and os.path.basename(path) == INCEPTION_WEIGHTS_FILENAME
      and not digest.startswith(INCEPTION_WEIGHTS_SHA256_PREFIX)):
    raise ValueError(f'{path} has sha256 {digest[:16]}..., not '
                     f'{INCEPTION_WEIGHTS_SHA256_PREFIX}...: corrupt or incomplete download? '
                     f'Re-download from {INCEPTION_WEIGHTS_URL}.')
  cache_file = _cache_file(cache_dir, digest)
  if os.path.isfile(cache_file):
    return _read_cache(cache_file)
  variables = convert_torch_state_dict(load_torch_state_dict(path))
  try:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = cache_file + f'.tmp{os.getpid()}.npz'
    np.savez(tmp, **_flat_arrays(variables))
    os.replace(tmp, cache_file)  # Atomic: concurrent readers never see half a file.
  except OSError:
    pass  # A read-only cache dir only costs the conversion next time.
  return variables


def _cache_file(cache_dir: str, digest: str) -> str:
  # The official file's digest starts with its 8-digit prefix, so its cache name is
  # known without the .pth; 8 hex digits are plenty to tell local files apart.
  return os.path.join(cache_dir, f'inception-{digest[:8]}-flax-v{_CACHE_VERSION}.npz')


def _read_cache(cache_file: str) -> dict[str, Any]:
  with np.load(cache_file, allow_pickle=False) as f:
    return _unflatten({k: f[k] for k in f.files})


def download_inception_weights(dest: str | os.PathLike | None = None) -> str:
  """Downloads pytorch-fid's FID Inception `.pth` (about 92 MB) and checks its hash.

  `dest` defaults to `~/.cache/scoresde_jax/pt_inception-2015-12-05-6726825d.pth`.
  Returns the path. Never called by the tests.
  """
  import urllib.request

  dest = os.path.expanduser(os.fspath(dest) if dest is not None else
                            os.path.join(DEFAULT_CACHE_DIR, INCEPTION_WEIGHTS_FILENAME))
  os.makedirs(os.path.dirname(dest) or '.', exist_ok=True)
  tmp = dest + '.part'
  urllib.request.urlretrieve(INCEPTION_WEIGHTS_URL, tmp)
  digest = _sha256(tmp)
  if not digest.startswith(INCEPTION_WEIGHTS_SHA256_PREFIX):
    os.remove(tmp)
    raise ValueError(f'downloaded file has sha256 {digest[:16]}..., expected '
                     f'{INCEPTION_WEIGHTS_SHA256_PREFIX}...')
  os.replace(tmp, dest)
  return dest
