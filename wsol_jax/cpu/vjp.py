"""Two reverse-mode rewrites that only XLA:CPU needs, injected into the ViT by the wing.

* ``dot_general``: an ``nn.Dense``-compatible ``dot_general`` whose VJP computes the weight
  gradient of a (..., K)·(K, M) product as xᵀ·g with x on the left. Autodiff's transpose
  rule writes (gᵀ·x)ᵀ, which XLA:CPU lowers with a transposing copy of g (the larger
  operand for qkv and fc1) before every weight-gradient dot: 48 copies of up to 39 MB per
  DeiT-S train step at batch 32. Same arithmetic; other dimension numbers pass through.
* ``gradient_barrier``: an identity on the residual stream between ViT blocks whose
  cotangent is materialised in the backward pass. Without it XLA:CPU fuses the residual
  gradient of every block into one loop fusion per consumer and recomputes the whole
  chain each time (O(depth²) elementwise work, ~1/3 of a DeiT-S train step). XLA:CPU
  strips ``optimization_barrier`` but never fuses across a while loop, so the barrier is a
  one-trip loop: on a GPU/TPU it would only block fusion, which is why it lives here.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_xt_g(x: jax.Array, w: jax.Array, precision: Any = None) -> jax.Array:
  return jnp.matmul(x, w, precision=precision)


def _matmul_fwd(x, w, precision):
  return jnp.matmul(x, w, precision=precision), (x, w)


def _matmul_bwd(precision, residuals, g):
  x, w = residuals
  dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  # dW = xᵀ·g over all leading dimensions, x on the left (no transposing copy of g).
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dw = lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), precision=precision)
  return dx, dw


_matmul_xt_g.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(x: jax.Array, w: jax.Array, dimension_numbers, precision: Any = None,
                preferred_element_type: Any = None, **kwargs: Any) -> jax.Array:
  """``lax.dot_general`` with the xᵀ·g weight gradient for (..., K)·(K, M) products."""
  plain = dimension_numbers != (((x.ndim - 1,), (0,)), ((), ()))
  if plain or preferred_element_type is not None or kwargs:
    return lax.dot_general(x, w, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)
  return _matmul_xt_g(x, w, precision)


@jax.custom_vjp
def gradient_barrier(x: jax.Array) -> jax.Array:
  """Identity whose cotangent is materialised in the backward pass (module docstring)."""
  return x


def _barrier_fwd(x):
  return x, None


def _barrier_bwd(_, g):
  # The loop runs once and multiplies by a data-dependent 1 (0 only if g is already NaN),
  # so neither JAX nor XLA can simplify it away.
  first = jnp.ravel(g)[0]
  one = (first == first).astype(g.dtype)
  trips = one.astype(jnp.int32) | 1
  out, _ = jax.lax.fori_loop(0, trips, lambda _, c: (c[0] * c[1], c[1]), (g, one))
  return (out,)


gradient_barrier.defvjp(_barrier_fwd, _barrier_bwd)
