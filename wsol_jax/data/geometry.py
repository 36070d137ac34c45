"""Box and mask geometry used by the transforms, with wsolevaluation semantics.

Boxes are [x0, y0, x1, y1] pixel coordinates (see ``records``). The eval
rescale and the mask resize reproduce wsolevaluation bit for bit:

* ``resize_bbox``: x' = floor(x * W' / W), y' = floor(y * H' / H) in float64
  (``evaluation.resize_bbox``; spec §1.6).
* ``resize_mask_nearest``: cv2 INTER_NEAREST, i.e. src = floor(dst * src/dst)
  with no half-pixel offset (spec §2). ``jax.image.resize(..., 'nearest')``
  differs and must not be used.
"""
from __future__ import annotations

import cv2
import numpy as np


def fit_to_image(box: tuple[float, float, float, float], width: float, height: float,
                 clip: bool) -> tuple[tuple[float, float, float, float] | None, str]:
  """The one rule for a box against its image's size: ``(box, '')`` when it lies inside;
  when it leaves the image, ``(clipped box, 'clipped')`` if ``clip``, else ``(None,
  'leaves')``; ``(None, 'outside')`` when clipping leaves nothing of it. Callers word the
  error with their file and line."""
  x0, y0, x1, y1 = box
  if min(x0, y0) >= 0 and x1 <= width and y1 <= height:
    return box, ""
  if not clip:
    return None, "leaves"
  x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
  if x1 < x0 or y1 < y0:
    return None, "outside"
  return (x0, y0, x1, y1), "clipped"


def resize_bbox(boxes: np.ndarray, image_size: tuple[int, int],
                resize_size: tuple[int, int]) -> np.ndarray:
  """wsolevaluation ``resize_bbox`` on (N, 4) boxes.

  Args:
    boxes: (N, 4) [x0, y0, x1, y1] in original pixels.
    image_size: original (W, H).
    resize_size: target (W', H').

  Returns:
    float64 (N, 4) of whole numbers: floor(x * W' / W), floor(y * H' / H).
  """
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  w, h = (float(v) for v in image_size)
  nw, nh = (float(v) for v in resize_size)
  out = np.empty_like(b)
  out[:, [0, 2]] = np.floor(b[:, [0, 2]] * nw / w)  # same operation order as the reference
  out[:, [1, 3]] = np.floor(b[:, [1, 3]] * nh / h)
  return out


def resize_mask_nearest(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """cv2 INTER_NEAREST resize of an (H, W) mask to ``size_hw`` = (H', W')."""
  h, w = size_hw
  if mask.shape[:2] == (h, w):
    return mask
  return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def pad_boxes(boxes: np.ndarray, max_boxes: int) -> tuple[np.ndarray, int]:
  """Pads (N, 4) boxes to int32 (max_boxes, 4) with -1 rows.

  Returns:
    (padded, dropped): boxes beyond ``max_boxes`` are dropped (first ones kept)
    and their count returned so the caller can warn.
  """
  b = np.asarray(boxes).reshape(-1, 4)
  dropped = max(0, b.shape[0] - max_boxes)
  out = np.full((max_boxes, 4), -1, np.int32)
  n = min(b.shape[0], max_boxes)
  out[:n] = b[:n]
  return out, dropped


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
  """Scales (N, 4) boxes by (sx, sy) (an independent x/y image resize)."""
  b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
  b[:, [0, 2]] *= sx
  b[:, [1, 3]] *= sy
  return b


def crop_boxes(boxes: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
  """Moves (N, 4) boxes into a crop's frame and clips them to [0, W-1] x [0, H-1]."""
  b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
  b[:, [0, 2]] = np.clip(b[:, [0, 2]] - left, 0, width - 1)
  b[:, [1, 3]] = np.clip(b[:, [1, 3]] - top, 0, height - 1)
  return b


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """Mirrors (N, 4) boxes horizontally in an image ``width`` pixels wide.

  With the exclusive-end convention (x1 = x + w) a box covering columns
  [x0, x1) maps to [W - x1, W - x0); clipped to W - 1 like every box.
  """
  b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
  x0 = width - b[:, 2]
  x1 = width - b[:, 0]
  b[:, 0] = np.clip(x0, 0, width - 1)
  b[:, 2] = np.clip(x1, 0, width - 1)
  return b
