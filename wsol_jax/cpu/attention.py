"""Multi-head attention core as an XLA:CPU FFI kernel (``attention.cc``).

``attention(qkv, num_heads) -> (out (B, N, C), probs (B, H, N, N))`` computes
``softmax(q·kᵀ/√d)·v`` per head straight from the fused qkv projection (B, N, 3C) in
timm's layout and returns the merged heads, as ``models.vit.attention_core`` does with XLA
ops, plus the probabilities. Its VJP is a second handler (cotangents of ``out`` and, if non-zero,
of ``probs``). It works per (image, head) with single-threaded OpenBLAS calls on XLA's
threads and an AVX2 softmax, with no head split/merge copies (measured against XLA:CPU's
batched dots in ``benchmarks/README.md``).

The kernel is compiled on first use (``wsol_jax.cpu.build``: the system C++ compiler,
jaxlib's FFI headers, ``scipy-openblas32``, cached in ``$WSOL_JAX_CACHE``).
``unavailable()`` says why that did not work (None when it did); ``load()`` raises with the
compiler's message.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax.cpu import build
from wsol_jax.cpu.build import KernelBuildError

SOURCE = os.path.join(build.KERNEL_DIR, "attention.cc")
FORWARD, BACKWARD = "wsol_attention_fwd", "wsol_attention_bwd"  # FFI target names


def _compile(lib_path: str, compiler: str) -> None:
  build.compile_library(SOURCE, lib_path, compiler)


@functools.cache
def load() -> str:
  """Compiles (once per machine and version) and registers the kernel; returns the library path."""
  return build.load_library(SOURCE, {FORWARD: "WsolAttentionForward",
                                     BACKWARD: "WsolAttentionBackward"})


@functools.cache
def unavailable() -> str | None:
  """None where ``load()`` succeeds here, else why not (cached)."""
  return build.reason_unavailable(load)


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


def attention_fn(qkv: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array]:
  """The ViT's injected ``attention_fn``: the kernel for float32, XLA's core otherwise."""
  if qkv.dtype != jnp.float32:
    from wsol_jax.models.vit import attention_core
    return attention_core(qkv, num_heads)
  return attention(qkv, num_heads)
