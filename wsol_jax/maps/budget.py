"""A per-device memory budget for batched map functions: split the batch into chunks that fit.

Every map kind treats the images of a batch independently (eval mode; LRP rescales per
image), so a batch may be computed as ``n`` sequential sub-batches with the same result up
to float32 rounding. :class:`Budgeted` jit-compiles ``fn(shared, *batched)`` for the
arguments it is called with, reads the compiled function's memory from XLA
(``compiled.memory_analysis()``: arguments + outputs + temporaries, per device) and, when it
exceeds the budget, compiles the batch as a ``lax.map`` over ``n`` chunks instead, for the
smallest ``n`` whose compiled memory fits (estimated from the unchunked function's
temporaries, then checked on the compiled chunked function). Nothing is hard-coded per
model: the estimate is XLA's own for this model, batch and backend.

The chunks are strided (chunk ``j`` holds rows ``j, j + n, j + 2n, ...``): a batch sharded
over the devices along its first axis splits into chunks that are each sharded the same
way, so every device computes its own rows in every chunk and no rows move between devices.
Hence ``n`` divides the per-device batch.

Budget (``memory_mb``, per device): > 0 MB as given; 0 = automatic: a fraction
(``AUTO_FRACTION``) of the device's memory limit where the backend reports one (GPU, TPU),
else of the host's physical memory shared by its local devices (CPU).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import numpy as np

log = logging.getLogger("wsol_jax.maps")

# Of the device memory: the rest is left to the variables of other functions, buffers of the
# previous batch still in flight, and the allocator's fragmentation.
AUTO_FRACTION = 0.5


def budget_bytes(memory_mb: float, device: jax.Device | None = None) -> int:
  """The per-device budget in bytes for ``memory_mb`` (> 0: that many MiB; 0: automatic)."""
  memory_mb = float(memory_mb)
  if memory_mb < 0:
    raise ValueError(f"maps memory budget must be >= 0 MB (0 = automatic), got {memory_mb}")
  if memory_mb > 0:
    return int(memory_mb * 2**20)
  device = device if device is not None else jax.local_devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without allocator statistics
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(AUTO_FRACTION * stats["bytes_limit"])
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return int(AUTO_FRACTION * host / max(1, jax.local_device_count()))


def compiled_bytes(compiled: Any) -> int | None:
  """Per-device memory of a compiled function (arguments + outputs − aliased + temporaries),
  or None where the backend gives no memory analysis."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def chunked(fn: Callable[..., Any], num_chunks: int) -> Callable[..., Any]:
  """``fn(shared, *batched)`` over ``num_chunks`` strided sub-batches, one after the other.

  ``batched`` are arrays with the batch on axis 0 (or None); every output leaf has the batch
  on axis 0. ``num_chunks`` = 1 is ``fn`` itself.
  """
  if num_chunks == 1:
    return fn

  def run(shared: Any, *batched: Any) -> Any:
    b = next(x.shape[0] for x in jax.tree.leaves(batched))
    if b % num_chunks:
      raise ValueError(f"batch of {b} does not split into {num_chunks} chunks")
    s = b // num_chunks

    def split(x: jax.Array) -> jax.Array:  # (B, ...) -> (n, B/n, ...), chunk j = rows j::n
      return x.reshape(s, num_chunks, *x.shape[1:]).swapaxes(0, 1)

    def merge(y: jax.Array) -> jax.Array:
      return y.swapaxes(0, 1).reshape(b, *y.shape[2:])

    out = jax.lax.map(lambda xs: fn(shared, *xs), jax.tree.map(split, batched))
    return jax.tree.map(merge, out)

  return run


def _per_device_batch(batched: tuple[Any, ...]) -> int:
  """Rows of the batch each device holds (the whole batch for an unsharded array)."""
  x = next(x for x in jax.tree.leaves(batched))
  sharding = getattr(x, "sharding", None)
  if sharding is None:
    return int(x.shape[0])
  return int(sharding.shard_shape(x.shape)[0])


def _key(args: tuple[Any, ...]) -> Any:
  leaves, treedef = jax.tree.flatten(args)
  # What a compiled function checks its arguments against: shape, dtype (weak or not), sharding.
  return treedef, tuple((np.shape(x), x.dtype if hasattr(x, "dtype") else np.result_type(x),
                         getattr(x, "weak_type", False), getattr(x, "sharding", None))
                        for x in leaves)


class Budgeted:
  """``fn(shared, *batched)`` jit-compiled within a per-device memory budget.

  Args:
    fn: a function of shared arguments (e.g. the variables; not split) and batched arrays
      (batch on axis 0, or None), whose outputs all have the batch on axis 0 and treat the
      rows independently.
    memory_mb: the per-device budget (see :func:`budget_bytes`; 0 = automatic).

  One compiled function per argument signature (shapes, dtypes, shardings); ``plan(...)``
  tells the number of chunks chosen for a signature.
  """

  def __init__(self, fn: Callable[..., Any], memory_mb: float = 0):
    self.fn = fn
    self.memory_mb = float(memory_mb)
    self._budget: int | None = None
    self._compiled: dict[Any, tuple[int, Any]] = {}

  @property
  def budget(self) -> int:
    if self._budget is None:
      self._budget = budget_bytes(self.memory_mb)
    return self._budget

  def __call__(self, shared: Any, *batched: Any) -> Any:
    key = _key((shared, *batched))
    if key not in self._compiled:
      self._compiled[key] = self._plan(shared, *batched)
    return self._compiled[key][1](shared, *batched)

  def plan(self, shared: Any, *batched: Any) -> int:
    """The number of chunks for these arguments (compiling them if not done yet)."""
    key = _key((shared, *batched))
    if key not in self._compiled:
      self._compiled[key] = self._plan(shared, *batched)
    return self._compiled[key][0]

  def _cache_size(self) -> int:
    """The number of compiled argument signatures (as a jitted function's)."""
    return len(self._compiled)

  def _compile(self, num_chunks: int, args: tuple[Any, ...]) -> Any:
    return jax.jit(chunked(self.fn, num_chunks)).lower(*args).compile()

  def _plan(self, *args: Any) -> tuple[int, Any]:
    compiled = self._compile(1, args)
    used = compiled_bytes(compiled)
    budget = self.budget
    if used is None or used <= budget:
      return 1, compiled
    per_device = _per_device_batch(args[1:])
    divisors = [n for n in range(2, per_device + 1) if per_device % n == 0]
    if not divisors:
      self._warn(used, budget, per_device)
      return 1, compiled
    m = compiled.memory_analysis()
    # Arguments and outputs stay whole; the temporaries shrink with the chunk (estimate).
    whole = used - m.temp_size_in_bytes
    start = next((i for i, n in enumerate(divisors) if whole + m.temp_size_in_bytes / n <= budget),
                 len(divisors) - 1)
    for n in divisors[start:]:
      compiled = self._compile(n, args)
      used = compiled_bytes(compiled)
      if used <= budget:
        log.info("maps: %d chunks of %d per device (%.0f MiB, budget %.0f MiB)", n,
                 per_device // n, used / 2**20, budget / 2**20)
        return n, compiled
    self._warn(used, budget, 1)
    return divisors[-1], compiled

  @staticmethod
  def _warn(used: int, budget: int, rows: int) -> None:
    log.warning("maps: %d image(s) per device need %.0f MiB, over the budget of %.0f MiB; "
                "running anyway", rows, used / 2**20, budget / 2**20)
