"""Shared post-processing of localization maps: resizing, min-max, input normalisation.

Resizing reproduces the official code exactly (half-pixel centres, edge clamp):
``'bilinear'`` = OpenCV INTER_LINEAR = torch ``interpolate(bilinear, align_corners=False)``;
``'bicubic'`` = OpenCV INTER_CUBIC (Keys a = −0.75, replicated border), which is
``jax.image.resize`` method ``'cubic-pytorch'`` — plain ``'cubic'`` (a = −0.5) does NOT match.

``resize_and_normalize_host`` is the host-side (numpy/OpenCV) twin for one map at an
arbitrary size (e.g. an image's original resolution): the official ``cv2.resize`` call
itself, without a compilation per distinct size.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

RESIZE_METHODS = {"bilinear": "linear", "bicubic": "cubic-pytorch"}
CV2_METHODS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


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

  The peak is exactly 1 and the minimum exactly 0, as in the official numpy division. XLA
  compiles the division by a per-map constant as a multiplication by its reciprocal, which
  leaves the peak of some maps at 1 − 2⁻²⁴: ``uint8(255·S)`` then peaks at 254 and every box
  threshold ``int(τ·max U)`` of wsolevaluation and TS-CAM shifts. So the maximum is pinned
  to 1 (and every value clipped to [0, 1]); the minimum needs no help, ``min − min = 0``.
  """
  axes = tuple(axes)
  lo = jnp.min(maps, axis=axes, keepdims=True)
  hi = jnp.max(maps, axis=axes, keepdims=True)
  span = hi - lo
  ok = jnp.all(jnp.isfinite(maps), axis=axes, keepdims=True) & (span > 0)
  scaled = jnp.clip((maps - lo) / jnp.where(ok, span, 1), 0, 1)
  scaled = jnp.where(maps == hi, 1, scaled)
  return jnp.where(ok, scaled, 0).astype(maps.dtype)


def resize_and_normalize(maps: jax.Array, size: Sequence[int], method: str = "bilinear") -> jax.Array:
  """The evaluation pipeline of every method: resize to ``size``, then min-max per map."""
  return minmax(resize(maps, size, method))


def resize_and_normalize_host(raw: np.ndarray, size: Sequence[int], method: str = "bilinear"
                              ) -> np.ndarray:
  """One (h, w) map -> (H, W) float64 in [0, 1]: ``cv2.resize`` in float64, then guarded min-max.

  ``size`` is (H, W). This is wsolevaluation's ``cv2.resize`` + ``normalize_scoremap``
  (ViTOL, CAM); for bilinear it equals TS-CAM/SCM/AG-CAM up to float32 rounding. The true
  numpy division gives exactly 1 at the peak (``s/s = 1`` in IEEE arithmetic) and 0 at the
  minimum, which the box thresholds ``int(τ·max uint8(255·S))`` rely on.
  """
  if method not in CV2_METHODS:
    raise ValueError(f"unknown resize method {method!r}; valid: {sorted(CV2_METHODS)}")
  raw = np.asarray(raw, np.float64)
  if raw.ndim != 2:
    raise ValueError(f"expected one (h, w) map, got shape {raw.shape}")
  out = cv2.resize(raw, (int(size[1]), int(size[0])), interpolation=CV2_METHODS[method])
  lo, hi = out.min(), out.max()
  if not np.isfinite(out).all() or hi <= lo:
    return np.zeros_like(out)
  return (out - lo) / (hi - lo)


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (or [0, 255] float) NHWC images -> ``(x/255 − mean)/std`` float32 (ToTensor + Normalize)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std
