"""Compiled programs kept between starts of a run, so that a resumed run does not trace.

JAX's persistent compilation cache (main.py) saves XLA's work, but its key is the hash of the
lowered program, so every start still traces and lowers the whole training step (and the
network's initialization, for the state's structure) before it can look anything up: most of
a warm start (benchmarks/RESULTS.md, "Start-up"). A `Program` keys the serialized executable
by what determines the program instead: the run's config, the source of this package, the
versions of the libraries that build it, the devices, XLA's flags and JAX's settings. A
resumed run then loads the executable without tracing, and takes its state's structure from
the executable's input signature.

The training runs of the score model, the classifier and the GAN keep their steps this way.
A key that misses (any of those changed) traces and compiles as usual and stores the result;
a stored file that fails to load is reported and replaced. Programs are stored only when
the caller names a directory (main.py: under the compilation cache, none with
`--compilation_cache=none`) and only on one host: a multi-host run traces as before.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import pickle

import jax
from jax.experimental import serialize_executable

from scoresde_jax import files, parallel
from scoresde_jax.run import loop

log = logging.getLogger(__name__)

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'ml_collections')
# Settings that only say where and whether things are cached or logged: not the program.
_IRRELEVANT_SETTINGS = ('cache', 'log', 'explain')


class Program:
  """`jitted`'s executable: loaded from `path` when it holds one, else compiled on the first
  call (from that call's arguments) and written there. Called like `jitted`."""

  def __init__(self, jitted, path: str | None):
    self._jitted = jitted
    self._path = path
    self.compiled = _load(path) if path else None
    self.loaded = self.compiled is not None  # from the store, not compiled by this start

  def abstract_args(self) -> tuple:
    """The positional arguments the loaded executable takes, as ShapeDtypeStructs with their
    shardings, in their pytree structure."""
    args, _ = self.compiled.args_info
    shardings, _ = self.compiled.input_shardings
    return tuple(
        jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                               arg, sharding)
        for arg, sharding in zip(args, shardings))

  def __call__(self, *args):
    if self.compiled is None:
      hits = _persistent_cache_hits[0]
      self.compiled = self._jitted.lower(*args).compile()
      # XLA:CPU (jax 0.10.2) serializes an executable that JAX's persistent cache loaded into
      # a file whose functions are missing when it runs ("Function ... not found"): only a
      # program compiled here is stored. A cache hit costs this start nothing and the next
      # one what it costs today.
      if self._path and _persistent_cache_hits[0] == hits:
        _save(self._path, self.compiled)
    return self.compiled(*args)


def training_step(step_fn, name: str, config, mesh, program_dir: str | None) -> Program:
  """`step_fn(state, batch) -> (state, metrics)` as the training runs call it: jitted with the
  old state donated (dead after the step, so its buffers are reused) and state and metrics
  replicated over `mesh`; stored as `name` under `program_dir`."""
  replicated = parallel.replicated(mesh)
  return Program(jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated)),
                 program_path(program_dir, name, config, mesh))


_persistent_cache_hits = [0]


def _count_persistent_cache_hits(event: str, **kwargs):
  del kwargs
  if event == '/jax/compilation_cache/cache_hits':
    _persistent_cache_hits[0] += 1


jax.monitoring.register_event_listener(_count_persistent_cache_hits)


def program_path(directory: str | None, name: str, config, mesh) -> str | None:
  """Where the program `name` of a run with `config` on `mesh` is stored (None: not stored)."""
  if directory is None or jax.process_count() > 1:
    return None
  key = {
      'program': name,
      'config': loop.config_json(config),
      'source': _source_digest(),
      'libraries': {lib: importlib.metadata.version(lib) for lib in _LIBRARIES},
      'devices': [(d.platform, d.device_kind, d.id) for d in mesh.devices.flat],
      'mesh': {str(axis): int(size) for axis, size in mesh.shape.items()},
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'jax_settings': {k: repr(v) for k, v in sorted(jax.config.values.items())
                       if not any(word in k for word in _IRRELEVANT_SETTINGS)},
  }
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
  return os.path.join(directory, f'{name}-{digest}.bin')


@functools.cache
def _source_digest() -> str:
  """One hash of every Python file of the package: an edited network or loss is another
  program."""
  h = hashlib.sha256()
  for root, dirs, names in os.walk(_PACKAGE):
    dirs.sort()
    for name in sorted(n for n in names if n.endswith('.py')):
      path = os.path.join(root, name)
      h.update(os.path.relpath(path, _PACKAGE).encode())
      with open(path, 'rb') as f:
        h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()


def _load(path: str):
  if not os.path.exists(path):
    return None
  try:
    with open(path, 'rb') as f:
      serialized, in_tree, out_tree = pickle.load(f)
    compiled = serialize_executable.deserialize_and_load(serialized, in_tree, out_tree)
  except Exception as e:  # pylint: disable=broad-except
    # A file from an interrupted write of another tool, or one the running XLA rejects: the
    # program is compiled again and the file replaced.
    log.warning('Ignoring the stored program %s (%s: %s); compiling it again.', path,
                type(e).__name__, e)
    return None
  log.info('Loaded the compiled program %s.', os.path.basename(path))
  return compiled


def _save(path: str, compiled):
  # A read-only or full cache, or a backend that cannot serialize its executables, costs the
  # next start time, not this run.
  try:
    data = pickle.dumps(serialize_executable.serialize(compiled))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_atomic(path, data)
  except (OSError, RuntimeError) as e:
    log.warning('Could not store the compiled program in %s: %s', path, e)
