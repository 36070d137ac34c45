"""Multi-head attention core as an XLA:CPU FFI kernel (``attention_cpu.cc``).

``attention(qkv, num_heads) -> (out (B, N, C), probs (B, H, N, N))`` computes
``softmax(q·kᵀ/√d)·v`` per head straight from the fused qkv projection (B, N, 3C) in
timm's layout and returns the merged heads, as ``vit.Attention`` does with XLA ops, plus
the probabilities. Its VJP is a second handler (cotangents of ``out`` and, if non-zero,
of ``probs``). On this project's 2-core CPU it runs the DeiT-S attention of a training
step ~2× faster than XLA:CPU's batched dots (``benchmarks/step_breakdown.py``).

The kernel is compiled on first use with the system C++ compiler (``$CXX`` or ``c++``)
against jaxlib's FFI headers and ``scipy-openblas32``, for this CPU (``-march=native``),
into ``$WSOL_JAX_CACHE`` (default ``~/.cache/wsol_jax``), keyed by source, jaxlib version,
compiler and CPU flags. ``available()`` says whether that worked; ``load()`` raises with
the compiler's message when it did not.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings

import jax
import jaxlib
import jax.numpy as jnp
import numpy as np

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(KERNEL_DIR, "attention_cpu.cc")
HEADERS = (os.path.join(KERNEL_DIR, "pool_tasks.h"),)
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
         "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros", "-w")
FORWARD, BACKWARD = "wsol_attention_fwd", "wsol_attention_bwd"  # FFI target names


class KernelBuildError(RuntimeError):
  """The attention kernel could not be compiled or loaded on this machine."""


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


def _compile(lib_path: str, compiler: str) -> None:
  try:
    import scipy_openblas32 as openblas
  except ImportError as e:
    raise KernelBuildError("the CPU attention kernel needs scipy-openblas32 "
                           "(pip install scipy-openblas32)") from e
  try:
    os.makedirs(os.path.dirname(lib_path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(lib_path))
  except OSError as e:
    raise KernelBuildError(f"cannot write the kernel into {os.path.dirname(lib_path)} "
                           f"(set WSOL_JAX_CACHE to a writable directory): {e}") from e
  os.close(fd)
  cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{openblas.get_include_dir()}",
         SOURCE, f"-L{openblas.get_lib_dir()}", f"-l{openblas.get_library()}",
         f"-Wl,-rpath,{openblas.get_lib_dir()}", "-o", tmp]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
      raise KernelBuildError(f"compiling {SOURCE} failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    os.replace(tmp, lib_path)  # atomic: a concurrent process sees no half-written library
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.cache
def load() -> str:
  """Compiles (once per machine and version) and registers the kernel; returns the library path."""
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    raise KernelBuildError("the CPU attention kernel needs a C++ compiler (c++ or $CXX) on PATH")
  key = hashlib.sha256()
  for path in (SOURCE, *HEADERS):
    with open(path, "rb") as f:
      key.update(f.read())
  for part in (" ".join(FLAGS), jax.__version__, jaxlib.__version__, compiler, _cpu_flags()):
    key.update(part.encode())
  lib_path = os.path.join(cache_dir(), f"attention_cpu-{key.hexdigest()[:16]}.so")
  if not os.path.exists(lib_path):
    _compile(lib_path, compiler)
  try:
    lib = ctypes.cdll.LoadLibrary(lib_path)
  except OSError as e:
    raise KernelBuildError(f"loading {lib_path} failed: {e}") from e
  jax.ffi.register_ffi_target(FORWARD, jax.ffi.pycapsule(lib.WsolAttentionForward), platform="cpu")
  jax.ffi.register_ffi_target(BACKWARD, jax.ffi.pycapsule(lib.WsolAttentionBackward), platform="cpu")
  return lib_path


@functools.cache
def available() -> bool:
  """Whether ``load()`` succeeds here (cached; warns once with the reason when not)."""
  try:
    load()
  except KernelBuildError as e:
    warnings.warn(f"the CPU attention kernel is not available, using XLA's attention: {e}",
                  stacklevel=2)
    return False
  return True


def _check(qkv: jax.Array, num_heads: int) -> None:
  if qkv.ndim != 3 or qkv.shape[-1] % (3 * num_heads) or qkv.dtype != jnp.float32:
    raise ValueError(f"attention_cpu: qkv must be float32 (B, N, 3·{num_heads}·head_dim), "
                     f"got {qkv.dtype} {tuple(qkv.shape)}")


def _forward(qkv: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array]:
  b, n, c3 = qkv.shape
  out = jax.ShapeDtypeStruct((b, n, c3 // 3), jnp.float32)
  probs = jax.ShapeDtypeStruct((b, num_heads, n, n), jnp.float32)
  return jax.ffi.ffi_call(FORWARD, (out, probs), vmap_method="sequential")(
      qkv, heads=np.int64(num_heads), scale=np.float32((c3 // 3 // num_heads) ** -0.5))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _attention(qkv: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array]:
  return _forward(qkv, num_heads)


def _attention_fwd(qkv, num_heads):
  out, probs = _forward(qkv.value, num_heads)
  return (out, probs), (qkv.value, probs)


def _attention_bwd(num_heads, residuals, cotangents):
  qkv, probs = residuals
  g_out, g_probs = cotangents
  if isinstance(g_out, jax.custom_derivatives.SymbolicZero):
    g_out = jnp.zeros(g_out.shape, jnp.float32)
  if isinstance(g_probs, jax.custom_derivatives.SymbolicZero):
    g_probs = jnp.zeros((0,), jnp.float32)  # the kernel skips it
  g_qkv = jax.ffi.ffi_call(BACKWARD, jax.ShapeDtypeStruct(qkv.shape, jnp.float32),
                           vmap_method="sequential")(
      qkv, probs, g_out.astype(jnp.float32), g_probs.astype(jnp.float32),
      heads=np.int64(num_heads), scale=np.float32((qkv.shape[-1] // 3 // num_heads) ** -0.5))
  return (g_qkv,)


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


def attention(qkv: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array]:
  """(softmax(q·kᵀ/√d)·v with heads merged (B, N, C), probabilities (B, H, N, N)) of the
  fused projection ``qkv`` (B, N, 3C); differentiable. Needs ``load()`` to have succeeded."""
  _check(qkv, num_heads)
  load()
  return _attention(qkv, num_heads)
