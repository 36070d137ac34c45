"""PxAP: pixel average precision of wsolevaluation's ``MaskEvaluator`` (pooled over a split).

Score histograms over positive (label 1) and negative (label 0) pixels are accumulated with
float64 bin edges ``[τ_0 … τ_{K-1}, 1, 2, 3]`` (numpy.histogram semantics, last bin closed);
pixels labelled 255 are ignored. From the top bin down, ``TP_j``/``FP_j`` count scores ``>=`` an
edge and ``PxAP = 100·Σ_{j>=1, TP_j+FP_j≠0} P_j·(R_j − R_{j−1})``. Note the float ``>=`` here
versus the uint8 ``>`` of the box metrics.

wsolevaluation only evaluates OpenImages30k masks; PxAP on other masks (e.g. CUB
segmentations) is not a number from the paper.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from wsol_jax.eval import box_accuracy as box_acc_lib
from wsol_jax.eval import boxes as boxes_lib

IGNORE_LABEL = 255


def pxap_bin_edges(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
  """Histogram edges ``thresholds + [1, 2, 3]`` (K + 3,) float64."""
  return np.append(np.asarray(thresholds, dtype=np.float64), [1.0, 2.0, 3.0])


def pxap_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
  """PxAP (percent) from positive/negative score histograms (K + 2,), as ``compute()``.

  Raises:
    RuntimeError: no positive pixel, or no prediction at any threshold.
  """
  pos_hist = np.asarray(pos_hist, dtype=np.float64)
  neg_hist = np.asarray(neg_hist, dtype=np.float64)
  tp = pos_hist[::-1].cumsum()
  fn = pos_hist.sum() - tp
  fp = neg_hist[::-1].cumsum()
  if ((tp + fn) <= 0).all():
    raise RuntimeError("No positive ground truth in the eval set.")
  if ((tp + fp) <= 0).all():
    raise RuntimeError("No positive prediction in the eval set.")
  non_zero = (tp + fp) != 0
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
  return float((precision[1:] * np.diff(recall))[non_zero[1:]].sum() * 100)


class PxAP:
  """Accumulates PxAP histograms over batches (pooled over all pixels of the split)."""

  def __init__(self, thresholds: Sequence[float] | np.ndarray | None = None, *,
               delta: float = 0.01):
    """Creates the accumulator.

    Args:
      thresholds: τ list; default ``np.arange(0, 1, delta)`` (float64, for the exact edges).
      delta: threshold step (``cam_curve_interval``) when ``thresholds`` is None.
    """
    self.thresholds = (boxes_lib.cam_thresholds(delta) if thresholds is None
                       else np.asarray(thresholds, dtype=np.float64))
    self.edges = pxap_bin_edges(self.thresholds)
    self.reset()

  def reset(self) -> None:
    """Clears the histograms."""
    self.pos_hist = np.zeros(len(self.edges) - 1, np.int64)
    self.neg_hist = np.zeros(len(self.edges) - 1, np.int64)

  def update(self, scoremaps: np.ndarray, gt_masks: np.ndarray,
             valid: np.ndarray | None = None) -> None:
    """Adds a batch.

    Args:
      scoremaps: (B, H, W) float maps in [0, 1] (NaN or out-of-range raises ValueError).
      gt_masks: (B, H, W) uint8 labels: 1 foreground, 0 background, 255 ignore.
      valid: optional (B,) bool mask of real rows.
    """
    maps = np.asarray(scoremaps, dtype=np.float64)
    masks = np.asarray(gt_masks)
    if maps.shape != masks.shape or maps.ndim != 3:
      raise ValueError(f"expected maps and masks of the same (B, H, W); got {maps.shape}, "
                       f"{masks.shape}")
    if valid is not None:
      keep = np.asarray(valid, dtype=bool)
      maps, masks = maps[keep], masks[keep]
    box_acc_lib.check_scoremaps(maps)
    self.pos_hist += np.histogram(maps[masks == 1], bins=self.edges)[0]
    self.neg_hist += np.histogram(maps[masks == 0], bins=self.edges)[0]

  def compute(self) -> float:
    """PxAP in percent."""
    return pxap_from_histograms(self.pos_hist, self.neg_hist)
