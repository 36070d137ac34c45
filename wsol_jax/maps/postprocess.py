"""Shared post-processing of localization maps: resizing, min-max, input normalisation.

Resizing reproduces the official code exactly (half-pixel centres, edge clamp):
``'bilinear'`` = OpenCV INTER_LINEAR = torch ``interpolate(bilinear, align_corners=False)``;
``'bicubic'`` = OpenCV INTER_CUBIC (Keys a = −0.75, replicated border), which is
``jax.image.resize`` method ``'cubic-pytorch'`` — plain ``'cubic'`` (a = −0.5) does NOT match.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

RESIZE_METHODS = {"bilinear": "linear", "bicubic": "cubic-pytorch"}


def resize(maps: jax.Array, size: Sequence[int], method: str = "bilinear") -> jax.Array:
  """Resizes the last two axes (h, w) of ``maps`` to ``size = (H, W)``."""
  if method not in RESIZE_METHODS:
    raise ValueError(f"unknown resize method {method!r}; valid: {sorted(RESIZE_METHODS)}")
  shape = tuple(maps.shape[:-2]) + tuple(int(s) for s in size)
  return jax.image.resize(maps, shape, method=RESIZE_METHODS[method], antialias=False,
                          precision=jax.lax.Precision.HIGHEST)


def minmax(maps: jax.Array, axes: Sequence[int] = (-2, -1)) -> jax.Array:
  """(x − min)/(max − min) per map over ``axes``; constant or non-finite maps become zeros.

  This is wsolevaluation's ``normalize_scoremap`` (the official TS-CAM/SCM code has no
  guard and would produce NaN for a constant map).
  """
  axes = tuple(axes)
  lo = jnp.min(maps, axis=axes, keepdims=True)
  hi = jnp.max(maps, axis=axes, keepdims=True)
  span = hi - lo
  ok = jnp.all(jnp.isfinite(maps), axis=axes, keepdims=True) & (span > 0)
  return jnp.where(ok, (maps - lo) / jnp.where(ok, span, 1), 0).astype(maps.dtype)


def resize_and_normalize(maps: jax.Array, size: Sequence[int], method: str = "bilinear") -> jax.Array:
  """The evaluation pipeline of every method: resize to ``size``, then min-max per map."""
  return minmax(resize(maps, size, method))


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (or [0, 255] float) NHWC images -> ``(x/255 − mean)/std`` float32 (ToTensor + Normalize)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std
