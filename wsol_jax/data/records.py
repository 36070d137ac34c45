"""The record every WSOL source hands to grain, and how to build one.

A record is a plain dict (picklable, so it crosses grain worker processes):

  'image':    uint8 (H, W, 3) RGB at the ORIGINAL size.
  'label':    int32 scalar (-1 when unknown, e.g. an unreadable record).
  'boxes':    float32 (G, 4) pixel [x0, y0, x1, y1] in original pixels, in
              wsolevaluation's convention (CUB: x1 = x + w; boxes are clipped
              to x1 <= W - 1, y1 <= H - 1 as wsolevaluation's metadata
              guarantees). G may be 0 (e.g. OpenImages, which has masks only).
  'mask':     optional uint8 (H, W): 1 object, 255 ignore, 0 background;
              present on every record of a source whose ``has_masks`` is True.
  'image_id': str, the dataset's own id (wsolevaluation id, TFDS filename).
  'index':    int, position of the record in its source.
  'error':    str, '' for a good record. Otherwise the reason the image (or
              its mask) could not be read; 'image' is then a 1x1 placeholder
              and the pipeline skips (train) or invalidates (eval) the row and
              counts it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

Record = dict[str, Any]

MASK_BACKGROUND = 0
MASK_OBJECT = 1
MASK_IGNORE = 255


def make_record(*, image: np.ndarray, label: int, boxes: np.ndarray, image_id: str, index: int,
                mask: np.ndarray | None = None) -> Record:
  """Validates and packs one good record (see the module docstring for fields)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"{image_id}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  record = {
      "image": image,
      "label": np.int32(label),
      "boxes": boxes,
      "image_id": str(image_id),
      "index": int(index),
      "error": "",
  }
  if mask is not None:
    mask = np.asarray(mask, np.uint8)
    if mask.shape != image.shape[:2]:
      raise ValueError(f"{image_id}: mask shape {mask.shape} != image shape {image.shape[:2]}")
    record["mask"] = mask
  return record


_WARNED: set[tuple[str, str]] = set()


def warn_once(logger: Any, kind: str, key: str, message: str, *args: Any) -> None:
  """``logger.warning(message, *args)`` the first time this process sees (kind, key): an
  image read every epoch and every evaluation is named once, not at every read."""
  if (kind, key) not in _WARNED:
    _WARNED.add((kind, key))
    logger.warning(message, *args)


class UnreadableDataError(RuntimeError):
  """Too many images of a split in a row cannot be read (the message names the split and a
  few files); training stops instead of waiting for a readable one forever."""


def describe_errors(records: list[Record], limit: int = 3) -> str:
  """``'id: error; id: error; ...'`` for the first ``limit`` error records."""
  shown = "; ".join(f"{r['image_id']}: {str(r['error']).splitlines()[0][:120]}"
                    for r in records[:limit])
  return shown + (f"; ... ({len(records) - limit} more)" if len(records) > limit else "")


def error_record(*, index: int, image_id: str, error: str, label: int = -1,
                 has_mask: bool = False) -> Record:
  """A placeholder record for an image that could not be read."""
  record = {
      "image": np.zeros((1, 1, 3), np.uint8),
      "label": np.int32(label),
      "boxes": np.zeros((0, 4), np.float32),
      "image_id": str(image_id),
      "index": int(index),
      "error": error or "unknown error",
  }
  if has_mask:
    record["mask"] = np.full((1, 1), MASK_IGNORE, np.uint8)
  return record


def boxes_from_normalized_yxyx(bbox: Any, height: int, width: int,
                               round_to_pixels: bool = True) -> np.ndarray:
  """TFDS normalised [ymin, xmin, ymax, xmax] boxes -> pixel [x0, y0, x1, y1].

  Args:
    bbox: one (4,) box, an (N, 4) array (TFDS mock data) or a list of (4,)
      arrays (real TFDS Sequence features); an empty list gives (0, 4).
    height, width: original image size.
    round_to_pixels: round to whole pixels. CUB (x, y, w, h) and Stanford Dogs
      (VOC XML) annotations are integers; rounding removes the float32
      normalisation error that would otherwise flip wsolevaluation's
      floor-rescaling by one pixel.

  Returns:
    float32 (N, 4); each coordinate pair is sorted (mock data is unordered)
    and clipped to [0, W - 1] x [0, H - 1].
  """
  b = np.asarray(bbox, np.float32).reshape(-1, 4).astype(np.float64)
  ys = np.sort(b[:, [0, 2]], axis=1) * height
  xs = np.sort(b[:, [1, 3]], axis=1) * width
  out = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
  if round_to_pixels:
    out = np.rint(out)
  out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, max(width - 1, 0))
  out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, max(height - 1, 0))
  return out.astype(np.float32)
