"""The FID Inception weights: pytorch-fid's `.pth`, found, converted to Flax and cached.

The weights are pytorch-fid's port of TF's 2015-12-05 graph
(`pt_inception-2015-12-05-6726825d.pth`), read without torch and without running pickled
code (`scoresde_jax.torch_pickle`). They are looked up, in order, at an explicit path, at
`$SCORESDE_INCEPTION_WEIGHTS`, and in `~/.cache/scoresde_jax/`; the converted Flax
variables are cached as `.npz` (plain arrays, read with `allow_pickle=False`).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from scoresde_jax import torch_pickle
from scoresde_jax.errors import WeightsError

INCEPTION_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                         'fid_weights/pt_inception-2015-12-05-6726825d.pth')
INCEPTION_WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
# torch.hub convention: the file name carries the first hex digits of its sha256.
INCEPTION_WEIGHTS_SHA256_PREFIX = '6726825d'
INCEPTION_WEIGHTS_ENV = 'SCORESDE_INCEPTION_WEIGHTS'
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

  Raises WeightsError (a FileNotFoundError; the message says where to download the file and
  where to put it) when the chosen location has no file.
  """
  if weights_path is not None:
    candidate = os.path.expanduser(os.fspath(weights_path))
  elif os.environ.get(INCEPTION_WEIGHTS_ENV):
    candidate = os.path.expanduser(os.environ[INCEPTION_WEIGHTS_ENV])
  else:
    candidate = os.path.expanduser(os.path.join(DEFAULT_CACHE_DIR, INCEPTION_WEIGHTS_FILENAME))
  if not os.path.isfile(candidate):
    raise WeightsError(_missing_weights_message([candidate]))
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
    WeightsError: no weights file (a FileNotFoundError; the message says where to get and
      put it).
    UnsafeCheckpointError: the file's pickle references more than tensors.
    ValueError: the file's hash or contents are not those of the FID Inception.
  """
  cache_dir = os.path.expanduser(os.fspath(cache_dir if cache_dir is not None
                                           else DEFAULT_CACHE_DIR))
  try:
    path = resolve_inception_weights_path(weights_path)
  except WeightsError:
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
  variables = convert_torch_state_dict(torch_pickle.load_state_dict(path))
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
