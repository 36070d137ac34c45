"""Box IoU with wsolevaluation's inclusive-pixel (+1) convention.

Boxes are integer ``[x0, y0, x1, y1]`` with inclusive ends: ``area = (x1-x0+1)·(y1-y0+1)``, so
``[0, 0, 0, 0]`` is one pixel. GT boxes travel as ``(B, G, 4)`` int arrays padded with rows of
``-1``; a row whose ``x0 < 0`` is padding.
"""
from __future__ import annotations

import numpy as np


def check_boxes(boxes: np.ndarray) -> None:
  """Raises RuntimeError (as ``check_box_convention``) unless boxes (N, 4) are valid."""
  boxes = np.asarray(boxes)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise RuntimeError(f"Box array must have shape (num_boxes, 4); got {boxes.shape}.")
  if (boxes < 0).any():
    raise RuntimeError("Box coordinates must be non-negative.")
  if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
    raise RuntimeError("Boxes do not follow the x0y0x1y1 convention.")


def valid_gt(gt_boxes: np.ndarray) -> np.ndarray:
  """Drops padding rows (``x0 < 0``) of one image's (G, 4) GT boxes and checks the rest."""
  gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
  gt = gt[gt[:, 0] >= 0]
  check_boxes(gt)
  return gt


def pairwise_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
  """IoU matrix (A, B) float64 of int boxes (A, 4) and (B, 4), as ``calculate_multiple_iou``.

  Raises:
    RuntimeError: a box is negative or has ``x1 < x0`` / ``y1 < y0``.
  """
  a, b = np.atleast_2d(np.asarray(box_a)), np.atleast_2d(np.asarray(box_b))
  check_boxes(a)
  check_boxes(b)
  a, b = a.astype(np.int64)[:, None, :], b.astype(np.int64)[None, :, :]
  inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
           * np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1))
  area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
  area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
  denominator = area_a + area_b - inter
  degenerate = denominator <= 0
  ious = inter / np.where(degenerate, 1, denominator)
  ious[degenerate] = 0
  return ious


def max_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
  """Best IoU of each box (N, 4) over the GT boxes (G, 4) -> (N,) float64.

  Raises:
    ValueError: no GT box (every row is padding).
  """
  if len(gt_boxes) == 0:
    raise ValueError("an image has no ground-truth box")
  return pairwise_iou(boxes, gt_boxes).max(axis=1)
