"""Device mesh, batch and parameter shardings for training and evaluation.

The same code runs on 1 CPU, 8 fake CPU devices, a GPU or a TPU slice. The mesh
(``config.mesh``) has a ``data`` axis and optionally an ``fsdp`` axis. Batches are split
along their first axis over every mesh axis. Parameters and optimizer state are
replicated, except along ``fsdp``, where ``PARAM_RULES`` shards them (FSDP/ZeRO-3 style:
XLA gathers each parameter where it is used and reduce-scatters its gradient).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
AXES = (DATA_AXIS, FSDP_AXIS)

# How a training-state leaf is placed on the 'fsdp' axis: the first rule whose pattern
# matches (re.search) the leaf's path wins. Paths look like 'params/blocks_0/attn/qkv/kernel'
# or 'opt_state/0/mu/blocks_0/attn/qkv/kernel' (Adam's moments follow their parameter).
#   'fsdp':      split the largest dimension the axis size divides (ties: the first);
#                replicated when none does or the leaf has fewer than FSDP_MIN_SIZE elements.
#   'replicate': a full copy on every device.
PARAM_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|/)(step|rng)$", "replicate"),                 # counters and the RNG key
    (r"(^|/)(pos_embed|cls_token)$", "replicate"),      # small, read whole by every step
    (r"(^|/)(batch_stats|scm)/", "replicate"),          # BatchNorm statistics, SCM's λ/β
    (r".*", "fsdp"),
)
FSDP_MIN_SIZE = 2 ** 14


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


def mesh_from_config(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of ``config.mesh`` (``shape``, ``axes``); a ``ConfigError`` names what is wrong."""
  from wsol_jax.config_lib import ConfigError
  axes = tuple(str(a) for a in mesh_config.axes)
  if not axes or len(set(axes)) != len(axes) or not set(axes) <= set(AXES):
    raise ConfigError(f"mesh.axes={axes}: give distinct names among {AXES}, e.g. ('data',) "
                      "or ('data', 'fsdp')")
  shape = tuple(int(s) for s in mesh_config.shape)
  n = len(jax.devices() if devices is None else devices)
  if not shape:
    shape = (n,) + (1,) * (len(axes) - 1)
  if len(shape) != len(axes):
    raise ConfigError(f"mesh.shape={shape} and mesh.axes={axes} differ in length")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"mesh.shape={shape}: sizes must be positive, at most one -1 (the rest)")
  known = int(np.prod([s for s in shape if s != -1]))
  if (-1 in shape and n % known) or (-1 not in shape and known != n):
    raise ConfigError(f"mesh.shape={shape} does not fit the {n} devices")
  return make_mesh(shape, axes, devices)


def _path_name(path: Sequence[Any]) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def leaf_spec(path: str, shape: Sequence[int], fsdp_size: int,
              rules: Sequence[tuple[str, str]] = PARAM_RULES) -> P:
  """The ``PartitionSpec`` of one state leaf under ``rules`` (``PARAM_RULES``)."""
  rule = next((r for pattern, r in rules if re.search(pattern, path)), "replicate")
  if rule not in ("fsdp", "replicate"):
    raise ValueError(f"unknown sharding rule {rule!r} for {path}; valid: 'fsdp', 'replicate'")
  if rule == "replicate" or fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  candidates = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], -i))
  return P(*([None] * axis + [FSDP_AXIS]))


def state_shardings(tree: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, str]] = PARAM_RULES) -> Any:
  """A ``NamedSharding`` per leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s): sharded on
  the mesh's ``fsdp`` axis by ``rules``, replicated otherwise (and on meshes without it)."""
  fsdp_size = dict(mesh.shape).get(FSDP_AXIS, 1)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, leaf_spec(_path_name(path), np.shape(leaf),
                                                       fsdp_size, rules)), tree)


def describe_state(tree: Any, shardings: Any) -> str:
  """One line: how many state bytes are sharded and what one device holds."""
  total = sharded = per_device = 0
  for leaf, sh in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)):
    size = int(np.prod(np.shape(leaf), dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    shard = int(np.prod(sh.shard_shape(np.shape(leaf)), dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    total += size
    per_device += shard
    sharded += size if shard < size else 0
  return (f"training state {total / 2**20:.1f} MiB, {sharded / max(total, 1):.0%} of it sharded; "
          f"{per_device / 2**20:.1f} MiB per device")


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
