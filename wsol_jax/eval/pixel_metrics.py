"""AG-CAM pixel-level localisation metrics (``localization.py`` + ``utils/bounding_box.py``).

Per image the map is binarised with ``S > 0.5``, every external contour gives an unclipped box
``[x, y, x+w, y+h]`` (``agcam_boxes``), and predicted and GT boxes are rasterised as unions of
boxes filled with INCLUSIVE ends (rows ``y0..y1``, cols ``x0..x1``; slicing truncates at the
map edge). With pixel counts TP/FP/FN/TN in float32 and eps = 1e-5 (as the torch code):
pixel_acc = (TP+TN+eps)/(TP+TN+FP+FN+eps), iou = (TP+eps)/(TP+FP+FN+eps),
dice = (2TP+eps)/(2TP+FP+FN+eps), precision = (TP+eps)/(TP+FP+eps),
recall = (TP+eps)/(TP+FN+eps). The reported numbers are means (fractions) over the images
the caller marks as correctly classified (AG-CAM skips misclassified ones).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from wsol_jax.eval import boxes as boxes_lib

METRIC_NAMES = ("pixel_acc", "iou", "dice", "precision", "recall")
_EPS = np.float32(1e-5)


def boxes_to_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Union of boxes (N, 4) filled ``[y0:y1+1, x0:x1+1]`` (AG-CAM ``box_to_seg``) -> (H, W) bool.

  Rows with ``x0 < 0`` are skipped (GT padding); coordinates past the map are truncated as
  slicing does.
  """
  height, width = shape
  boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
  boxes = boxes[boxes[:, 0] >= 0]
  diff = np.zeros((height + 1, width + 1), np.int64)
  x0, y0 = np.minimum(boxes[:, 0], width), np.minimum(boxes[:, 1], height)
  x1, y1 = np.minimum(boxes[:, 2] + 1, width), np.minimum(boxes[:, 3] + 1, height)
  np.add.at(diff, (y0, x0), 1)
  np.add.at(diff, (y0, x1), -1)
  np.add.at(diff, (y1, x0), -1)
  np.add.at(diff, (y1, x1), 1)
  return diff.cumsum(axis=0).cumsum(axis=1)[:height, :width] > 0


def mask_metrics(pred_mask: np.ndarray, gt_mask: np.ndarray) -> np.ndarray:
  """[pixel_acc, iou, dice, precision, recall] (5,) float32 of two (H, W) bool masks."""
  pred, gt = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
  tp = np.float32(np.count_nonzero(pred & gt))
  fp = np.float32(np.count_nonzero(pred & ~gt))
  fn = np.float32(np.count_nonzero(~pred & gt))
  tn = np.float32(np.count_nonzero(~pred & ~gt))
  two_tp = np.float32(2) * tp
  return np.array([(tp + tn + _EPS) / (tp + tn + fp + fn + _EPS),
                   (tp + _EPS) / (tp + fp + fn + _EPS),
                   (two_tp + _EPS) / (two_tp + fp + fn + _EPS),
                   (tp + _EPS) / (tp + fp + _EPS),
                   (tp + _EPS) / (tp + fn + _EPS)], dtype=np.float32)


def agcam_image_metrics(scoremap: np.ndarray, gt_boxes: np.ndarray,
                        threshold: float = 0.5) -> np.ndarray:
  """AG-CAM's five metrics (5,) float32 for one min-max normalised (H, W) map and (G, 4) boxes."""
  shape = np.shape(scoremap)
  pred = boxes_to_mask(boxes_lib.agcam_boxes(scoremap, threshold), shape)
  return mask_metrics(pred, boxes_to_mask(gt_boxes, shape))


@dataclasses.dataclass(frozen=True)
class AgCamPixelResult:
  """Mean AG-CAM metrics (fractions) over ``count`` images."""

  count: int
  pixel_acc: float
  iou: float
  dice: float
  precision: float
  recall: float


class AgCamPixelMetrics:
  """Accumulates AG-CAM's per-image pixel metrics over the correctly classified images."""

  def __init__(self, threshold: float = 0.5):
    """Creates the accumulator; ``threshold`` is AG-CAM's ``--threshold`` (strict ``>``)."""
    self.threshold = float(threshold)
    self.reset()

  def reset(self) -> None:
    """Clears the sums."""
    self._sums = np.zeros(5, np.float64)
    self._count = 0

  def update(self, scoremaps: np.ndarray, gt_boxes: np.ndarray,
             correct: np.ndarray | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """Adds a batch.

    Args:
      scoremaps: (B, H, W) min-max normalised maps of the predicted class.
      gt_boxes: (B, G, 4) int GT boxes on the map grid (``int(coord/size·224)``, no clamp),
        ``-1``-padded rows.
      correct: optional (B,) bool, True where the prediction equals the label; other images
        are skipped (AG-CAM's protocol). None counts every image.
      valid: optional (B,) bool mask of real rows.

    Returns:
      (B, 5) float32 per-image metrics (NaN where skipped).
    """
    maps, gt = np.asarray(scoremaps), np.asarray(gt_boxes)
    keep = np.ones(len(maps), bool)
    for mask in (correct, valid):
      if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    out = np.full((len(maps), 5), np.nan, np.float32)
    for i in np.flatnonzero(keep):
      out[i] = agcam_image_metrics(maps[i], gt[i], self.threshold)
    self._sums += out[keep].astype(np.float64).sum(axis=0)
    self._count += int(keep.sum())
    return out

  def compute(self) -> AgCamPixelResult:
    """Mean of each metric over the counted images."""
    if self._count == 0:
      raise ValueError("AgCamPixelMetrics.compute() called before any counted image")
    return AgCamPixelResult(self._count, *map(float, self._sums / self._count))
