"""The shared ViT pass of the attention-based maps: one forward, at most one backward.

Every gradient map needs ``∂y_t/∂A_l`` (the target logit w.r.t. the post-softmax
attention of every layer) for every image of a batch. In eval mode nothing mixes
images, so ONE reverse pass with the cotangent ``one_hot(targets)`` of shape (B, C)
gives each image the gradient of its own target logit. ``jax.vjp`` splits the
forward from the backward, so with ``targets=None`` the argmax of the forward's
logits chooses the cotangent: still one forward and one backward.

The gradient is taken w.r.t. the model's ``attn_delta`` (zeros added after the
softmax), with the variables closed over: the backward computes activation
gradients only, never parameter gradients.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax.maps.targets import resolve_targets

GRAD_ROWS = ("all", "cls")


class AttentionPass(NamedTuple):
  """What one pass over a batch of B images returns (a pytree, so jit can return it).

  Attributes:
    logits: (B, C) float32.
    targets: (B,) int32, the class whose logit was differentiated (argmax if none given).
    aux: the model's captures (see ``wsol_jax.models.vit``), e.g. ``attn`` (L, B, H, N, N).
    grads: ``∂y_t/∂A`` (L, B, H, N, N) for ``grad_rows='all'``, (L, B, H, 1, N) for
      ``'cls'`` (the class-token query row), None without a backward pass.
  """
  logits: jax.Array
  targets: jax.Array
  aux: dict[str, jax.Array]
  grads: jax.Array | None


def num_tokens(model: nn.Module, images: jax.Array) -> tuple[int, int, int]:
  """``(h, w, N)``: the patch grid of ``images`` (B, H, W, 3) and the token count h·w + 1."""
  h, w = model.grid_shape(images.shape[1], images.shape[2])
  return h, w, h * w + 1


def to_grid(patch_row: jax.Array, h: int, w: int) -> jax.Array:
  """(B, h·w) values of the patch tokens (row-major, p = w·row + col) -> (B, h, w)."""
  return patch_row.reshape(patch_row.shape[0], h, w)


def attention_pass(model: nn.Module, variables: Any, images: jax.Array,
                   targets: jax.Array | None = None, *, capture: Sequence[str] = (),
                   grad_rows: str | None = None, stop_gradient: bool = False) -> AttentionPass:
  """Forward (and, with ``grad_rows``, one backward) of a ViT over a batch.

  Args:
    model: a ``VisionTransformer`` (any head).
    variables: its variables (extra method subtrees such as SCM's are ignored).
    images: (B, H, W, 3) normalised NHWC images.
    targets: (B,) int classes to differentiate; None = argmax of the logits.
    capture: model captures to return in ``aux``.
    grad_rows: None (forward only), ``'all'`` (full (N, N) gradients: GAR, LRP) or
      ``'cls'`` (class-token row only: AG-CAM; a smaller cotangent).
    stop_gradient: stop the gradient at every attention's input (official AG-CAM).

  Returns:
    AttentionPass(logits (B, C), targets (B,), aux, grads).
  """
  capture = tuple(capture)
  if grad_rows is None:
    logits, aux = model.apply(variables, images, capture=capture,
                              stop_grad_attn_input=stop_gradient)
    return AttentionPass(logits, resolve_targets(logits, targets), aux, None)
  if grad_rows not in GRAD_ROWS:
    raise ValueError(f"grad_rows must be one of {GRAD_ROWS} or None, got {grad_rows!r}")
  _, _, n = num_tokens(model, images)
  rows = n if grad_rows == "all" else 1
  delta = jnp.zeros((model.depth, images.shape[0], model.num_heads, rows, n), jnp.float32)

  def forward(d: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    return model.apply(variables, images, capture=capture, attn_delta=d,
                       stop_grad_attn_input=stop_gradient)

  logits, backward, aux = jax.vjp(forward, delta, has_aux=True)
  targets = resolve_targets(logits, targets)
  (grads,) = backward(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
  return AttentionPass(logits, targets, aux, grads)
