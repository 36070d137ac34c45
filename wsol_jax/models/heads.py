"""Classification heads, created inside a parent's ``nn.compact`` scope under the name ``head``.

* linear head on the class token (timm ViT),
* 3×3 conv "semantic" head on the patch grid whose spatial mean gives the
  logits (TS-CAM / SCM; PyTorch's default conv init, which is what the official
  code ends up with — not He),
* 1×1 conv class-map head (ACoL-style, RFGA), also averaged for the logits.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax.models import layers

HEAD_TYPES = ("linear", "conv3x3", "none")


def linear_head(pooled: jax.Array, num_classes: int, dtype: Any = jnp.float32,
                name: str = "head", dot_general: Callable[..., jax.Array] | None = None
                ) -> jax.Array:
  """(B, D) -> logits (B, C) with timm's init (trunc-normal .02 weight, zero bias)."""
  return nn.Dense(num_classes, dtype=dtype, kernel_init=layers.trunc_normal_init(0.02),
                  bias_init=nn.initializers.zeros, name=name, dot_general=dot_general)(pooled)


def conv3x3_semantic_head(grid: jax.Array, num_classes: int, dtype: Any = jnp.float32,
                          name: str = "head",
                          dot_general: Callable[..., jax.Array] | None = None) -> jax.Array:
  """(B, h, w, D) patch grid -> semantic maps (B, h, w, C) (3×3 conv, stride 1, padding 1)."""
  fan_in = 9 * grid.shape[-1]
  return layers.Conv3x3(num_classes, layers.torch_uniform_init(fan_in),
                        layers.torch_uniform_init(fan_in), dtype, dot_general, name=name)(grid)


def class_map_head(features: jax.Array, num_classes: int, dtype: Any = jnp.float32,
                   name: str = "head") -> jax.Array:
  """(B, h, w, C_in) -> class maps (B, h, w, C): 1×1 conv with bias (MoANA/ACoL init)."""
  return nn.Conv(num_classes, (1, 1), dtype=dtype, kernel_init=layers.kaiming_normal_fan_out,
                 bias_init=layers.torch_uniform_init(features.shape[-1]), name=name)(features)


def spatial_mean(maps: jax.Array) -> jax.Array:
  """Global average pool of (B, h, w, C) maps -> (B, C), accumulated in float32."""
  return jnp.mean(maps.astype(jnp.float32), axis=(1, 2))
