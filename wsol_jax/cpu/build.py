"""Compiles and registers wsol_jax's XLA:CPU FFI kernels (one shared library per source).

A kernel is compiled on first use with the system C++ compiler (``$CXX`` or ``c++``)
against jaxlib's FFI headers and ``scipy-openblas32`` (the ``[cpu]`` extra), for this CPU
(``-march=native``, no fast-math),
into ``$WSOL_JAX_CACHE`` (default ``~/.cache/wsol_jax``), keyed by source, headers,
jaxlib version, compiler and CPU flags, and written atomically.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Any

import jax
import jaxlib

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
HEADERS = (os.path.join(KERNEL_DIR, "pool_tasks.h"),)
# No fast-math: IEEE semantics (NaN, signed zeros, no reassociation), so a kernel's result
# differs from host to host only by float32 rounding (the vector width and FMA contraction
# that -march=native picks). -fno-math-errno changes no result.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-w")


class KernelBuildError(RuntimeError):
  """A kernel could not be compiled or loaded on this machine."""


def cache_dir() -> str:
  return os.path.join(os.environ.get("WSOL_JAX_CACHE") or os.path.expanduser("~/.cache/wsol_jax"),
                      "kernels")


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    import platform
    return platform.processor()


def compile_library(source: str, lib_path: str, compiler: str) -> None:
  """Compiles ``source`` into ``lib_path`` (atomic; nothing is left behind on failure)."""
  name = os.path.basename(source)
  try:
    import scipy_openblas32 as openblas
  except ImportError as e:
    raise KernelBuildError(f"the CPU kernel {name} needs scipy-openblas32, the [cpu] extra "
                           "(pip install 'wsol_jax[cpu]')") from e
  try:
    os.makedirs(os.path.dirname(lib_path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(lib_path))
  except OSError as e:
    raise KernelBuildError(f"cannot write the kernel into {os.path.dirname(lib_path)} "
                           f"(set WSOL_JAX_CACHE to a writable directory): {e}") from e
  os.close(fd)
  cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{openblas.get_include_dir()}",
         f"-I{KERNEL_DIR}", source, f"-L{openblas.get_lib_dir()}", f"-l{openblas.get_library()}",
         f"-Wl,-rpath,{openblas.get_lib_dir()}", "-o", tmp]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
      raise KernelBuildError(f"compiling {source} failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    os.replace(tmp, lib_path)  # atomic: a concurrent process sees no half-written library
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_library(source: str, targets: dict[str, str]) -> str:
  """Compiles ``source`` once per machine and version and registers its FFI handlers.

  Args:
    source: path of the ``.cc`` file.
    targets: FFI target name -> exported handler symbol.
  Returns:
    The library's path.
  """
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    raise KernelBuildError(f"the CPU kernel {os.path.basename(source)} needs a C++ compiler "
                           "(c++ or $CXX) on PATH")
  key = hashlib.sha256()
  for path in (source, *HEADERS):
    with open(path, "rb") as f:
      key.update(f.read())
  for part in (" ".join(FLAGS), jax.__version__, jaxlib.__version__, compiler, _cpu_flags()):
    key.update(part.encode())
  stem = os.path.splitext(os.path.basename(source))[0]
  lib_path = os.path.join(cache_dir(), f"{stem}-{key.hexdigest()[:16]}.so")
  if not os.path.exists(lib_path):
    compile_library(source, lib_path, compiler)
  try:
    lib = ctypes.cdll.LoadLibrary(lib_path)
  except OSError as e:
    raise KernelBuildError(f"loading {lib_path} failed: {e}") from e
  for target, symbol in targets.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return lib_path


def reason_unavailable(load: Any) -> str | None:
  """None where ``load()`` (a kernel module's) succeeds, else the build error's message."""
  try:
    load()
  except KernelBuildError as e:
    return str(e)
  return None
