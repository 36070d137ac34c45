"""TS-CAM and SCM maps: class-token attention coupled with the conv head's semantic maps."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from wsol_jax.maps import postprocess
from wsol_jax.models.vit import attention_sum


def tscam_maps(attn_cls: jax.Array, semantic: jax.Array) -> jax.Array:
  """TS-CAM coupled maps for every class: (L,B,H,N), (B,h,w,C) -> (B, C, h, w).

  The raw attention sum (not normalised) times the semantic maps, as
  ``TSCAM.forward`` in eval mode.
  """
  b, h, w, _ = semantic.shape
  a = attention_sum(attn_cls).reshape(b, 1, h, w)
  return a * jnp.transpose(semantic, (0, 3, 1, 2))


def scm_maps(attn_cls: jax.Array, semantic: jax.Array) -> jax.Array:
  """SCM inference maps F⁰ ⊙ S⁰ (B, C, h, w) with F⁰ the per-image min-max of the attention sum.

  The Activation Diffusion Blocks are training-only and are not run here.
  """
  b, h, w, _ = semantic.shape
  f0 = postprocess.minmax(attention_sum(attn_cls), axes=(-1,)).reshape(b, 1, h, w)
  return f0 * jnp.transpose(semantic, (0, 3, 1, 2))


def select_class(maps: jax.Array, targets: jax.Array) -> jax.Array:
  """The target class's map of every image: (B, C, h, w), (B,) -> (B, h, w)."""
  return jnp.take_along_axis(maps, targets[:, None, None, None].astype(jnp.int32), axis=1)[:, 0]
