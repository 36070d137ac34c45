"""The CPU wing's malloc setting: freed blocks stay in the process, so a worker thread's next large block costs no page faults."""
import os
import subprocess
import sys

import pytest

from wsol_jax.cpu import malloc as host_memory

# A worker thread mallocs, touches and frees a 256 MB block three times (as XLA:CPU's
# worker threads do with each execution's temporary buffer) and reports the page faults.
SCRIPT = """
import ctypes, ctypes.util, resource, sys, threading
from wsol_jax.cpu import malloc as host_memory
applied = host_memory.keep_freed_host_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 * 2**20
faults = []
def work():
  for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ptr = libc.malloc(size)
    ctypes.memset(ptr, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    libc.free(ptr)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(applied, *faults)
"""
def _run(mode: str, **env: str) -> tuple[str, list[int]]:
  out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                       check=True, env={**os.environ, **env}).stdout.split()
  return out[0], [int(f) for f in out[1:]]


@pytest.mark.skipif(sys.platform != "linux", reason="glibc mallopt")
def test_freed_block_is_reused_without_page_faults():
  applied, kept = _run("keep")
  assert applied == "True"
  # Default malloc gives the block back to the kernel: every reuse faults again
  # (PAGES times with 4 KiB pages, fewer with transparent huge pages).
  applied, default = _run("default")
  assert applied == "False"
  assert min(default[1:]) > 0 and kept[0] > 0
  assert max(kept[1:]) * 20 < min(default[1:]), (kept, default)


def test_env_var_leaves_malloc_alone():
  applied, faults = _run("keep", **{host_memory.ENV_VAR: "default"})
  assert applied == "False"
