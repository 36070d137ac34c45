"""Image and mask decoding to the record format (RGB uint8, gray uint8 masks).

Images are decoded with PIL and converted with ``Image.convert('RGB')``, the
same call as wsolevaluation's loader: grayscale is replicated, CMYK is
converted by PIL's formula, alpha is dropped (not composited), palettes are
expanded. Masks are read like wsolevaluation's ``get_mask``: cv2 grayscale.
Every failure raises ``ImageDecodeError`` with the reason.
"""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
from PIL import Image


class ImageDecodeError(Exception):
  """An image or mask could not be read or decoded."""


def decode_image_bytes(data: bytes, what: str = "image") -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, ...) -> uint8 (H, W, 3) RGB."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # raises on truncated data
      rgb = img.convert("RGB")
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
    raise ImageDecodeError(f"cannot decode {what}: {type(e).__name__}: {e}") from e
  array = np.asarray(rgb, np.uint8)
  if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
    raise ImageDecodeError(f"cannot decode {what}: empty image {array.shape}")
  return array


def read_image_file(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file -> uint8 (H, W, 3) RGB."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageDecodeError(f"cannot read {os.fspath(path)}: {e}") from e
  return decode_image_bytes(data, what=os.fspath(path))


def read_mask_file(path: str | os.PathLike) -> np.ndarray:
  """Reads a mask PNG as grayscale (cv2.IMREAD_GRAYSCALE) -> uint8 (H, W)."""
  try:
    data = np.fromfile(path, np.uint8)
  except OSError as e:
    raise ImageDecodeError(f"cannot read mask {os.fspath(path)}: {e}") from e
  mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
  if mask is None:
    raise ImageDecodeError(f"cannot decode mask {os.fspath(path)}")
  return mask


def to_rgb(array: np.ndarray) -> np.ndarray:
  """A decoded uint8 array (H,W), (H,W,1), (H,W,3) or (H,W,4) -> (H, W, 3) RGB."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ImageDecodeError(f"expected a uint8 image, got {array.dtype}")
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
    raise ImageDecodeError(f"unsupported image shape {array.shape}")
  if array.shape[2] == 1:
    return np.repeat(array, 3, axis=2)
  return np.ascontiguousarray(array[..., :3])
