"""Keep freed host memory inside the process, so XLA:CPU reuses its buffers without page faults.

XLA:CPU allocates the temporary buffer of every execution afresh (``posix_memalign`` on a
worker thread; 4.3 GB for a DeiT-S train step at batch 32 and 224 px). glibc serves an
allocation that large from a new ``mmap`` and gives it back with ``munmap``, so each step
first-touches the whole buffer again (~1.1 M page faults per DeiT-S step; measured cost in
``benchmarks/README.md``). PyTorch avoids this with its caching allocator; here three
``mallopt`` settings do the same for the whole process:

* one malloc arena (``M_ARENA_MAX=1``): a worker thread's own arena is at most 64 MB and
  falls back to ``mmap`` for anything larger, whatever the other settings say;
* no ``mmap`` for large blocks (``M_MMAP_MAX=0``): they come from the heap and go back to it;
* no heap trimming (``M_TRIM_THRESHOLD`` = SIZE_MAX): freed pages stay mapped.

The resident size then stays at the peak of the run instead of dropping between steps.
The settings only reach threads that allocate for the first time afterwards, so call
:func:`keep_freed_host_memory` before JAX starts its CPU backend (first ``jax.devices()``
or first computation; ``wsol_jax.cpu.install`` does). Set ``WSOL_JAX_HOST_MALLOC=default``
to leave malloc untouched.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV_VAR = "WSOL_JAX_HOST_MALLOC"
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_applied = False


def keep_freed_host_memory() -> bool:
  """Configure glibc malloc as described above; True if it was applied.

  A no-op (False) off Linux, with a C library without ``mallopt`` (e.g. musl), or when
  ``WSOL_JAX_HOST_MALLOC=default``.
  """
  if os.environ.get(ENV_VAR, "").lower() == "default" or platform.system() != "Linux":
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success. The trim threshold is a size_t in glibc: -1 -> SIZE_MAX.
  global _applied
  _applied = all(mallopt(param, value) == 1 for param, value in
                 ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))) or _applied
  return _applied


def applied() -> bool:
  """Whether ``keep_freed_host_memory`` took effect in this process."""
  return _applied
