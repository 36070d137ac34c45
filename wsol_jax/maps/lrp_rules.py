"""Relevance rules of hila-chefer/Transformer-Explainability (``modules/layers_ours.py``).

Every rule maps the relevance ``r`` at an op's output to relevance at its
input(s), written as the official "gradient × input" (``RelPropSimple``):
``Z = f(X)``, ``S = sdiv(R, Z)``, ``R_X = X ⊙ ∂⟨Z, S⟩/∂X`` — here with
``jax.vjp`` of ``f``. All rules are batched: relevance never mixes images
(the residual-add rescaling sums over each image's tensor, not the batch).

Rules (spec methods.md §4):

* :func:`linear_rule` — Linear, α = 1, β = 0, bias ignored.
* :func:`add_rule` — residual add with the |ΣRₐ| : |ΣR_b| rescaling.
* :func:`clone_rule` — fan-out: ``x ⊙ Σᵢ sdiv(Rᵢ, x)``.
* :func:`bilinear_rule` — einsum (matmul) gradient × input for both operands
  (the caller halves them, as the official attention does).
* :func:`select_rule` — class-token pooling (index select of token 0).
* LayerNorm, GELU, softmax and dropout pass relevance unchanged (no function).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

EPS = 1e-9


def sdiv(a: jax.Array, b: jax.Array) -> jax.Array:
  """Official ``safe_divide``: ``a / (b + 1e-9)`` where ``b ≠ 0``, else 0 (broadcasting).

  ``b.clamp(min=1e-9) + b.clamp(max=1e-9)`` equals ``b + 1e-9`` for every float ``b``;
  a denominator that is exactly 0 (``b = −1e-9``) is replaced by 1e-9.
  """
  den = b + jnp.asarray(EPS, b.dtype)
  den = jnp.where(den == 0, jnp.asarray(EPS, b.dtype), den)
  return jnp.where(b != 0, a / den, jnp.zeros((), jnp.result_type(a, b)))


def grad_times_input(fn: Callable[..., jax.Array], r: jax.Array,
                     *xs: jax.Array) -> tuple[jax.Array, ...]:
  """``RelPropSimple``: ``Xᵢ ⊙ ∂⟨fn(X), sdiv(R, fn(X))⟩/∂Xᵢ`` for each input ``Xᵢ``."""
  z, vjp = jax.vjp(fn, *xs)
  grads = vjp(sdiv(r, z))
  return tuple(x * g for x, g in zip(xs, grads))


def linear_rule(x: jax.Array, kernel: jax.Array, r: jax.Array) -> jax.Array:
  """Linear relevance, α = 1, β = 0 (official ``Linear.relprop``); the bias is ignored.

  ``Z = x⁺W⁺ + x⁻W⁻``, ``S = sdiv(R, Z)``, ``R_x = x⁺ ⊙ S W⁺ᵀ + x⁻ ⊙ S W⁻ᵀ``.
  (The β-term is multiplied by β = 0 in the official code and is not computed.)

  Args:
    x: (..., I) layer input.
    kernel: (I, O) Flax Dense kernel (= PyTorch ``weight.T``).
    r: (..., O) relevance at the output.

  Returns:
    (..., I) relevance at the input.
  """
  wp = jnp.maximum(kernel, 0)
  wn = jnp.minimum(kernel, 0)
  xp = jnp.maximum(x, 0)
  xn = jnp.minimum(x, 0)
  rp, rn = grad_times_input(lambda a, b: a @ wp + b @ wn, r, xp, xn)
  return rp + rn


def _image_sum(x: jax.Array) -> jax.Array:
  """Per-image sum over every axis but the first, keeping dims: (B, ...) -> (B, 1, ...)."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def add_rule(a: jax.Array, b: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Residual add ``z = a + b`` (official ``Add.relprop``), batched per image.

  ``Rₐ = a ⊙ sdiv(R, z)``, ``R_b = b ⊙ sdiv(R, z)``, then each is rescaled so that
  ``ΣRₐ : ΣR_b = |ΣRₐ| : |ΣR_b|`` and ``ΣRₐ + ΣR_b = ΣR``, sums taken over one
  image's whole tensor (the official code sums the whole batch-of-one tensor).

  Args:
    a, b: (B, ...) the two summands.
    r: (B, ...) relevance at ``a + b``.

  Returns:
    (Rₐ, R_b), each (B, ...).
  """
  ra, rb = grad_times_input(jnp.add, r, a, b)
  a_sum, b_sum, r_sum = _image_sum(ra), _image_sum(rb), _image_sum(r)
  total = jnp.abs(a_sum) + jnp.abs(b_sum)
  a_fact = sdiv(jnp.abs(a_sum), total) * r_sum
  b_fact = sdiv(jnp.abs(b_sum), total) * r_sum
  return ra * sdiv(a_fact, a_sum), rb * sdiv(b_fact, b_sum)


def clone_rule(x: jax.Array, rs: Sequence[jax.Array]) -> jax.Array:
  """Fan-out of ``x`` to several branches (official ``Clone.relprop``): ``x ⊙ Σᵢ sdiv(Rᵢ, x)``."""
  s = sdiv(rs[0], x)
  for r in rs[1:]:
    s = s + sdiv(r, x)
  return x * s


def bilinear_rule(equation: str, u: jax.Array, v: jax.Array,
                  r: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Relevance of both operands of ``z = einsum(equation, u, v)`` (official ``einsum.relprop``).

  ``S = sdiv(R, z)``, ``R_u = u ⊙ ∂⟨z, S⟩/∂u``, ``R_v = v ⊙ ∂⟨z, S⟩/∂v``. Each of
  them sums to ΣR (z is linear in each operand), so the official attention halves
  both to conserve relevance; that halving is left to the caller.
  """
  return grad_times_input(lambda a, b: jnp.einsum(equation, a, b), r, u, v)


def select_rule(x: jax.Array, r: jax.Array, index: int = 0) -> jax.Array:
  """Token pooling ``x[:, index]`` (official ``IndexSelect.relprop``).

  Args:
    x: (B, N, D) tokens.
    r: (B, D) relevance of the selected token.

  Returns:
    (B, N, D): ``x ⊙ sdiv(R, x)`` at token ``index``, zeros elsewhere.
  """
  (rx,) = grad_times_input(lambda t: t[:, index], r, x)
  return rx
