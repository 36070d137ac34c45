"""Attention rollout (Abnar & Zuidema) and GAR, ViTOL's gradient attention rollout.

Both roll per-layer (N, N) matrices Ā_l out over the layers and read the class row::

    B̂_l = (Ā_l + I) / rowsum(Ā_l + I)        # ViTOL / hila ``compute_rollout_attention``
    R   = B̂_L · B̂_{L−1} ⋯ B̂_{s+1}           # s = start_layer (0: all layers)
    map = R[0, 1:]                             # class row, patch columns

* rollout: Ā_l = mean_h A_l (``Baselines.generate_rollout``);
* GAR: Ā_l = mean_h max(0, ∂y_t/∂A_l ⊙ A_l) (``Baselines.generate_grad_rollout``).

Only the class row is needed, so a row vector r (B, N) is propagated instead of
multiplying N×N matrices: ``r ← r·B̂_l = (r/s_l)·Ā_l + r/s_l`` for l = L … s+1, with
s_l the row sums — O(N²) per layer, never forming B̂_l.

``normalization='half'`` is the Attention-Rollout baseline of the AG-CAM repository
(jacobgil ``vit_rollout``, discard_ratio 0): ``a_l = (Ā_l + I)/2`` divided by its row
sums broadcast over the *columns* (``a / a.sum(dim=-1)`` without keepdim); the row sums
are 1 up to rounding, so it equals the ViTOL rollout up to rounding. (jacobgil also
divides the map by its max, which the min-max post-processing makes irrelevant.)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax.maps import attention

NORMALIZATIONS = ("rows", "half")
_HIGHEST = jax.lax.Precision.HIGHEST


def _row_times(r: jax.Array, a: jax.Array) -> jax.Array:
  """(B, N) · (B, N, N) -> (B, N), in full float32 precision (no TF32/bf16 passes)."""
  return jnp.einsum("bi,bij->bj", r, a, precision=_HIGHEST)


def rollout_class_row(fused: jax.Array, start_layer: int = 0,
                      normalization: str = "rows") -> jax.Array:
  """Class row of the rollout of per-layer matrices.

  Args:
    fused: (L, B, N, N) head-fused matrices Ā_l (query axis −2, key axis −1).
    start_layer: first layer included (layers ``start_layer … L−1`` are rolled out).
    normalization: ``'rows'`` (ViTOL/hila: (Ā + I)/rowsum) or ``'half'`` (AG-CAM's
      jacobgil baseline, see the module docstring).

  Returns:
    (B, N): row 0 of B̂_{L−1} ⋯ B̂_{start_layer}, class column included.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  num_layers, b, n, _ = fused.shape
  if not 0 <= start_layer < num_layers:
    raise ValueError(f"start_layer must be in [0, {num_layers}), got {start_layer}")
  eye = jnp.eye(n, dtype=fused.dtype)
  r = jnp.broadcast_to(eye[0], (b, n))
  for layer in range(num_layers - 1, start_layer - 1, -1):
    a = fused[layer]
    if normalization == "rows":
      sums = jnp.sum(a + eye, axis=-1)  # as the official code: sum of (Ā + I)
      scaled = r / sums
      r = _row_times(scaled, a) + scaled
    else:
      half = (a + eye) / 2
      r = _row_times(r, half) / jnp.sum(half, axis=-1)
  return r


def attention_rollout(attn: jax.Array, start_layer: int = 0, normalization: str = "rows") -> jax.Array:
  """Rollout of mean_h A_l: (L, B, H, N, N) attention -> (B, N − 1) patch values."""
  return rollout_class_row(jnp.mean(attn, axis=2), start_layer, normalization)[:, 1:]


def gradient_rollout(attn: jax.Array, grads: jax.Array, start_layer: int = 0) -> jax.Array:
  """GAR: rollout of mean_h max(0, G_l ⊙ A_l); (L, B, H, N, N) ×2 -> (B, N − 1)."""
  fused = jnp.mean(jnp.maximum(grads * attn, 0), axis=2)
  return rollout_class_row(fused, start_layer, "rows")[:, 1:]


def rollout(model: nn.Module, variables: Any, images: jax.Array, *, start_layer: int = 0,
            normalization: str = "rows") -> tuple[jax.Array, jax.Array]:
  """Attention-rollout maps of a ViT (class-agnostic; forward only).

  Args:
    model: a ``VisionTransformer``.
    variables: its variables.
    images: (B, H, W, 3) normalised NHWC images.
    start_layer: first rolled-out layer (ViTOL: 0).
    normalization: ``'rows'`` (ViTOL) or ``'half'`` (AG-CAM's baseline).

  Returns:
    (maps (B, h, w) raw, logits (B, C)); h, w = the patch grid of the input.
  """
  h, w, _ = attention.num_tokens(model, images)
  p = attention.attention_pass(model, variables, images, capture=("attn",))
  return attention.to_grid(attention_rollout(p.aux["attn"], start_layer, normalization), h, w), p.logits


def gar(model: nn.Module, variables: Any, images: jax.Array, targets: jax.Array | None = None, *,
        start_layer: int = 0) -> tuple[jax.Array, jax.Array]:
  """GAR maps (ViTOL) of a ViT: one forward and one backward for the whole batch.

  Args:
    model: a ``VisionTransformer`` (ViTOL's has final LayerNorm eps 1e-5).
    variables: its variables.
    images: (B, H, W, 3) normalised NHWC images.
    targets: (B,) int classes (ViTOL evaluates the GT class); None = argmax.
    start_layer: first rolled-out layer (ViTOL: 0).

  Returns:
    (maps (B, h, w) raw, logits (B, C)).
  """
  h, w, _ = attention.num_tokens(model, images)
  p = attention.attention_pass(model, variables, images, targets, capture=("attn",), grad_rows="all")
  return attention.to_grid(gradient_rollout(p.aux["attn"], p.grads, start_layer), h, w), p.logits
