"""AG-CAM (Leem & Seo, AAAI'24; ``Methods/AGCAM/AGCAM.py``, head and layer fusion 'sum').

    M = Σ_l Σ_h sigmoid(S_l[h, 0, :]) ⊙ ReLU(∂y_t/∂A_l[h, 0, :]),  map = M[1:]

S_l are the scaled pre-softmax scores q·kᵀ/√d and A_l the post-softmax attention, both
class-token query rows only. The official model stops the gradient at every
attention's input (the normed block input fed to qkv), so ∂y/∂A_l flows only through
the residual/MLP paths of later blocks (paper Eq. 3); ``stop_gradient=False`` gives the
plain-autograd variant.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax.maps import attention


def agcam_from_rows(scores_cls: jax.Array, grads_cls: jax.Array) -> jax.Array:
  """AG-CAM from class rows: (L, B, H, N) scores and gradients -> (B, N − 1)."""
  mask = jax.nn.relu(grads_cls) * jax.nn.sigmoid(scores_cls)
  return jnp.sum(jnp.sum(mask, axis=2), axis=0)[:, 1:]  # heads, then layers (as the official Reduce)


def agcam(model: nn.Module, variables: Any, images: jax.Array, targets: jax.Array | None = None, *,
          stop_gradient: bool = True) -> tuple[jax.Array, jax.Array]:
  """AG-CAM maps of a ViT: one forward and one backward (class rows only) for the batch.

  Args:
    model: a ``VisionTransformer``.
    variables: its variables.
    images: (B, H, W, 3) normalised NHWC images.
    targets: (B,) int classes; None = argmax (AG-CAM's localization protocol).
    stop_gradient: the official stop-gradient at every attention input (default True).

  Returns:
    (maps (B, h, w) raw, logits (B, C)).
  """
  h, w, _ = attention.num_tokens(model, images)
  p = attention.attention_pass(model, variables, images, targets, capture=("scores_cls",),
                               grad_rows="cls", stop_gradient=stop_gradient)
  return attention.to_grid(agcam_from_rows(p.aux["scores_cls"], p.grads[:, :, :, 0]), h, w), p.logits
