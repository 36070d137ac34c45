"""SCM's Newton–Schulz chain on a grid stencil as an XLA:CPU FFI kernel (``newton_schulz.cc``).

``forward(coef_m, coef_x0, h, w, iterations)`` returns the dense iterates X_1..X_{K−1}
(each (B, N, N)) of X_{k+1} = X_k (2I − M X_k) from X₀ = α·M, and ``backward`` runs the
dense steps of its VJP (from a dense cotangent of X_{last+1} down to the constant X₀) and
returns the stencil coefficients' cotangent. M and X₀ are passed as their five coefficient
planes per image, (B, 5, N) (centre, right, left, down, up; zero outside the grid), as
``models.scm_adb._coefficients`` lays them out: this module is a ``models.scm_adb.DenseSteps``
(the wing injects it on a single-device CPU backend). The recurrence and its VJP are the
JAX code's, evaluated one image per task with the image's matrices in L2.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax.cpu import build

SOURCE = os.path.join(build.KERNEL_DIR, "newton_schulz.cc")
FORWARD, BACKWARD = "wsol_newton_schulz_fwd", "wsol_newton_schulz_bwd"  # FFI target names


@functools.cache
def load() -> str:
  """Compiles (once per machine and version) and registers the kernel; returns the library path."""
  return build.load_library(SOURCE, {FORWARD: "WsolNewtonSchulzForward",
                                     BACKWARD: "WsolNewtonSchulzBackward"})


@functools.cache
def unavailable() -> str | None:
  """None where ``load()`` succeeds here, else why not (cached)."""
  return build.reason_unavailable(load)


def _check_coef(name: str, coef: jax.Array, h: int, w: int) -> None:
  if coef.dtype != jnp.float32 or coef.ndim != 3 or coef.shape[1:] != (5, h * w):
    raise ValueError(f"newton_schulz_cpu: {name} must be float32 (B, 5, {h * w}), "
                     f"got {coef.dtype} {tuple(coef.shape)}")


def forward(coef_m: jax.Array, coef_x0: jax.Array, h: int, w: int, iterations: int
            ) -> tuple[jax.Array, ...]:
  """X_1..X_{K−1} (K = ``iterations`` ≥ 2), each (B, N, N); not differentiable itself."""
  _check_coef("coef_m", coef_m, h, w)
  _check_coef("coef_x0", coef_x0, h, w)
  if iterations < 2:
    raise ValueError(f"newton_schulz_cpu.forward needs iterations >= 2, got {iterations}")
  load()
  b, n = coef_m.shape[0], h * w
  shapes = tuple(jax.ShapeDtypeStruct((b, n, n), jnp.float32) for _ in range(iterations - 1))
  return tuple(jax.ffi.ffi_call(FORWARD, shapes, vmap_method="sequential")(
      coef_m, coef_x0, h=np.int64(h), w=np.int64(w)))


def backward(coef_m: jax.Array, coef_x0: jax.Array, xs: tuple[jax.Array, ...], g: jax.Array,
             h: int, w: int) -> jax.Array:
  """Dense VJP steps over X_last..X_1 (``xs``) and X₀ from ∂L/∂X_{last+1} = ``g`` (B, N, N).

  Returns the coefficient planes' cotangent, (B, 5, N): −Σ_k Ȳ_k ⊙ X_k on the stencil entries.
  """
  _check_coef("coef_m", coef_m, h, w)
  _check_coef("coef_x0", coef_x0, h, w)
  b, n = coef_m.shape[0], h * w
  for name, a in (("g", g), *((f"xs[{i}]", x) for i, x in enumerate(xs))):
    if a.dtype != jnp.float32 or a.shape != (b, n, n):
      raise ValueError(f"newton_schulz_cpu: {name} must be float32 {(b, n, n)}, "
                       f"got {a.dtype} {tuple(a.shape)}")
  load()
  return jax.ffi.ffi_call(BACKWARD, jax.ShapeDtypeStruct((b, 5, n), jnp.float32),
                          vmap_method="sequential")(coef_m, coef_x0, g, *xs, h=np.int64(h),
                                                    w=np.int64(w))
