"""Device mesh and batch sharding for data-parallel training and evaluation.

The same code runs on 1 CPU, 8 fake CPU devices, a GPU or a TPU slice: the
mesh has a single ``data`` axis over all devices (or the shape a config asks
for), parameters are replicated and batches are split along their first axis.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(shape: Sequence[int] | None = None,
              axis_names: Sequence[str] = (DATA_AXIS,),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Returns a mesh over ``devices`` (default: all); ``shape=None`` puts them all on ``data``."""
  devices = list(jax.devices() if devices is None else devices)
  if shape is None or tuple(shape) in ((), (-1,)):
    shape = (len(devices),)
  shape = tuple(int(s) for s in shape)
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    shape = tuple(len(devices) // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {shape} does not use all {len(devices)} devices")
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh shape {shape} and axis names {tuple(axis_names)} differ in length")
  return Mesh(np.asarray(devices).reshape(shape), tuple(axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device (parameters, optimizer state)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over every mesh axis."""
  return NamedSharding(mesh, P(mesh.axis_names))


def global_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's numpy batch into global arrays sharded on the batch axis.

  Every process passes its own slice (``global_batch_size / process_count`` rows);
  on a single process this is a plain device put with the batch split over devices.
  """
  sharding = batch_sharding(mesh)
  n_dev = mesh.devices.size
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "USO":  # strings stay on the host
      continue
    global_rows = value.shape[0] * jax.process_count()
    if global_rows % n_dev:
      raise ValueError(
          f"batch field {key!r} has {global_rows} rows in total, not divisible by the "
          f"{n_dev} devices of the mesh; choose a batch size that is a multiple of {n_dev}")
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def to_host(x: Any) -> np.ndarray | None:
  """A device array as a full host array; in multi-process runs gathered from every process."""
  if x is None:
    return None
  if getattr(x, "is_fully_addressable", True) or getattr(x, "is_fully_replicated", False):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
