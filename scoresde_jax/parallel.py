"""Device mesh helpers: data parallelism over a 1-D mesh axis named 'data'.

Arrays of a batch are sharded along their batch axis; parameters and optimizer state are
replicated. Under `jax.jit` this is the global view of what `pmap` did in the reference:
means over the batch are means over the global batch, with the all-reduces placed by XLA.
The same code runs on one device, on 8 TPU cores, or on many hosts (after
`jax.distributed.initialize()`).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


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
