"""Device mesh helpers: data parallelism over a 1-D mesh axis named 'data'.

Arrays of a batch are sharded along their batch axis; parameters and optimizer state are
replicated. Each host reads its own part of a batch (`datasets.get_dataset`); `shard_batch`
makes global arrays of those parts, and `host_local` / `allgather_rows` / `gather` bring
results back to numpy. Under `jax.jit` this is the global view of what `pmap` did in the reference:
means over the batch are means over the global batch, with the all-reduces placed by XLA.
The same code runs on one device, on 8 TPU cores, or on many hosts (after
`jax.distributed.initialize()`).

On a CPU, `split_cpu` first makes one JAX device per core: XLA:CPU runs a small network's
step on about one core however many there are, and data parallelism over per-core devices
uses them all.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def cpu_device_count(batch_sizes: Sequence[int], cores: int | None = None) -> int:
  """The most CPU devices, at most one per core, that split every batch size evenly."""
  cores = usable_cores() if cores is None else cores
  return max(n for n in range(1, max(cores, 1) + 1) if all(b % n == 0 for b in batch_sizes))


CPU_DEVICES_FLAG_ERROR = '--cpu_devices must be auto or a whole number >= 1'


def is_cpu_devices_flag(value: str) -> bool:
  """Whether `value` is a valid `--cpu_devices` (main.py, benchmarks/vs_reference.py)."""
  return value == 'auto' or (value.isdigit() and int(value) >= 1)


def cpu_devices_from_flag(value: str, batch_sizes: Sequence[int], cores: int | None = None) -> int:
  """The device count a valid `--cpu_devices` asks for: `auto` is `cpu_device_count`."""
  if not is_cpu_devices_flag(value):
    raise ValueError(f'{CPU_DEVICES_FLAG_ERROR}, not {value!r}')
  return cpu_device_count(batch_sizes, cores) if value == 'auto' else int(value)


def split_cpu(num_devices: int) -> bool:
  """Makes JAX's CPU backend `num_devices` devices, one per core, each single-threaded.

  Measured on 2 cores (benchmarks/RESULTS.md, "Embedded default"): the digits train step at
  batch 64 takes 287 ms on one device (271 ms with one thread: XLA:CPU leaves the second core
  mostly idle), 204 ms on two, 180 ms on two without Eigen's intra-op threads, which only
  contend for the cores the devices already use. No effect on GPU or TPU devices. Must run
  before JAX computes anything; does nothing (returns False) for one device or when
  XLA_FLAGS or JAX_NUM_CPU_DEVICES already set the CPU device count.
  """
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if (num_devices <= 1 or 'xla_force_host_platform_device_count' in xla_flags
      or 'JAX_NUM_CPU_DEVICES' in os.environ
      or jax.config.jax_num_cpu_devices == num_devices):  # a notebook cell run again
    return False
  jax.config.update('jax_num_cpu_devices', num_devices)
  if 'xla_cpu_multi_thread_eigen' not in xla_flags:
    os.environ['XLA_FLAGS'] = (xla_flags + ' --xla_cpu_multi_thread_eigen=false').strip()
  return True


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all devices of all hosts), axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(devices, (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh, batch_axis: int = 0) -> NamedSharding:
  """Shards axis `batch_axis` of an array over the mesh's 'data' axis."""
  return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain(x, sharding):
  """Pins the sharding of an intermediate inside `jit` (no-op when `sharding` is None)."""
  if sharding is None:
    return x
  if any(t == AxisType.Explicit for t in getattr(sharding.mesh, 'axis_types', ())):
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


def gather(x) -> np.ndarray:
  """A global array (possibly spread over hosts) -> the whole array as numpy, on every host.

  Collective on many hosts: every process must call it.
  """
  if jax.process_count() == 1 or getattr(x, 'is_fully_addressable', True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_global_array(local_batch: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """This host's part of a batch -> a global jax.Array with `sharding`.

  The hosts' parts are concatenated along the sharded axis (the global shape is inferred by
  `jax.make_array_from_process_local_data`).

  Raises:
    ValueError: the global size of a sharded axis is not divisible by the devices it is
      sharded over, or the sharding has more axes than the array.
  """
  local_batch = np.asarray(local_batch)
  spec = getattr(sharding, 'spec', None)
  mesh = getattr(sharding, 'mesh', None)
  if spec is not None and mesh is not None:
    for axis, names in enumerate(spec):
      if names is None:
        continue
      names = names if isinstance(names, tuple) else (names,)
      n = math.prod(mesh.shape[a] for a in names)
      if axis >= local_batch.ndim:
        raise ValueError(f'Sharding {spec} does not fit an array of shape {local_batch.shape}.')
      size = local_batch.shape[axis] * jax.process_count()
      if size % n:
        raise ValueError(f'The batch size ({size}, axis {axis} of shape {local_batch.shape}) is '
                         f'not divisible by the {n} devices of mesh axis {"/".join(names)}.')
  return jax.make_array_from_process_local_data(sharding, local_batch)


def shard_batch(batch, sharding_or_mesh, axis_name: str = DATA_AXIS):
  """A host batch (an array or a dict of arrays) -> global jax.Arrays sharded over `axis_name`.

  With a `Mesh`, the batch axis is 0, or 1 when images carry a leading axis of fused steps
  (image arrays of rank 5, `[k, B, H, W, C]`; a dict is judged by its 'image'). With a
  `Sharding`, every array gets that sharding.
  """
  if isinstance(sharding_or_mesh, jax.sharding.Mesh):
    image = batch['image'] if isinstance(batch, dict) else batch
    axis = 1 if np.ndim(image) == 5 else 0
    shardings = NamedSharding(sharding_or_mesh, P(*([None] * axis), axis_name))
  else:
    shardings = sharding_or_mesh
  return jax.tree_util.tree_map(lambda x: to_global_array(x, shardings), batch)


def host_local(x) -> np.ndarray:
  """This host's rows of a global batch `[B, ...]` sharded along axis 0, in order, as numpy.

  A replicated array is kept whole by host 0 only (the others get no rows), so rows counted
  over the hosts count every example once. On one host: the whole array.
  """
  if getattr(x, 'is_fully_addressable', True):
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0)) if jax.process_index() == 0 else np.asarray(x)[:0]
  rows = {}
  for shard in x.addressable_shards:
    # Devices holding the same rows (a mesh axis other than the batch's) give one copy.
    rows.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
  return np.concatenate([rows[k] for k in sorted(rows)])


def allgather_rows(x: np.ndarray) -> np.ndarray:
  """Every host's `x: [n_host, ...]` concatenated in host order, on every host.

  The hosts' n_host may differ. Collective on many hosts: every process must call it.
  """
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  x = np.asarray(x)
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([len(x)]))).reshape(-1)
  # process_allgather needs equal shapes on every host: pad to the longest.
  padded = np.zeros((int(counts.max()),) + x.shape[1:], x.dtype)
  padded[:len(x)] = x
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [hosts, max, ...]
  return np.concatenate([gathered[i, :c] for i, c in enumerate(counts)])
