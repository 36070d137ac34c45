"""MaxBoxAcc (V1) and MaxBoxAccV2 of wsolevaluation, accumulated over batches in constant memory.

Per image i and score-map threshold τ_k the best IoU ``IoU*_{i,k}`` is the max over the boxes
mined at τ_k (one for V1, every contour for V2) and over the GT boxes. ``correct_δ[k]`` counts
the images with ``IoU*_{i,k} >= δ/100`` (inclusive), ``BoxAcc(τ_k, δ) = 100·correct_δ[k]/N`` and
``MaxBoxAcc(δ) = max_k BoxAcc``; each δ picks its own τ. MaxBoxAccV2 is the mean over δ of
``MaxBoxAcc(δ)`` with V2 boxes. Only integer counters (and a float sum for mIoU) are kept, so
the result does not depend on batch order or size.

V2 best IoUs come by default from ``components`` (connected components of every thresholded
mask in one numba sweep per map, bit-identical to the official loop, no contour tracing);
``method="contours"`` selects the OpenCV path of ``boxes``, which V1 always uses (its
largest-``contourArea`` choice needs the contours themselves).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np

from wsol_jax.eval import boxes as boxes_lib
from wsol_jax.eval import components as components_lib
from wsol_jax.eval import iou as iou_lib

METHODS = ("components", "contours")


def check_scoremaps(scoremaps: np.ndarray) -> None:
  """wsolevaluation's ``check_scoremap_validity`` for (..., H, W) maps (ValueError)."""
  if scoremaps.size == 0:
    return
  low, high = scoremaps.min(), scoremaps.max()  # NaN propagates through min/max
  if np.isnan(low) or np.isnan(high):
    raise ValueError("Scoremap must not contain nans.")
  if low < 0 or high > 1:
    raise ValueError(f"Scoremap must be in range [0, 1]; min={low}, max={high}.")


def resolve_method(multi_contour: bool, method: str | None) -> str:
  """The box-mining method: ``components`` (V2 only; default for V2) or ``contours``."""
  if method is None:
    return "components" if multi_contour else "contours"
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  if method == "components" and not multi_contour:
    raise ValueError("method='components' gives V2 boxes only; V1 (largest contourArea) needs "
                     "method='contours'")
  return method


def check_gt_batch(gt_boxes: np.ndarray) -> None:
  """``iou.valid_gt`` on every image of (B, G, 4) GT boxes; raises the first image's error."""
  gt = np.asarray(gt_boxes, dtype=np.int64)  # as valid_gt
  real = gt[..., 0] >= 0
  bad = real & ((gt < 0).any(-1) | (gt[..., 2] < gt[..., 0]) | (gt[..., 3] < gt[..., 1]))
  fail = bad.any(1) | ~real.any(1)
  if fail.any():
    iou_lib.valid_gt(gt[int(np.argmax(fail))])  # RuntimeError on an invalid box
    raise ValueError("an image has no ground-truth box")


def best_iou_per_threshold(scoremap: np.ndarray, gt_boxes: np.ndarray,
                           thresholds: Sequence[float] | np.ndarray, *,
                           multi_contour: bool, method: str | None = None) -> np.ndarray:
  """Best IoU over mined boxes and GT boxes at every threshold for one map.

  Args:
    scoremap: (H, W) float map in [0, 1] (quantised in its dtype; pass float64 for parity).
    gt_boxes: (G, 4) int GT boxes on the map grid; rows with ``x0 < 0`` are padding.
    thresholds: (K,) score-map thresholds.
    multi_contour: V2 boxes (all contours) instead of V1 (largest contour).
    method: ``"components"`` (default for V2) or ``"contours"`` (OpenCV; the V1 default).

  Returns:
    (K,) float64 best IoUs, bit-identical to the official accumulate loop.
  """
  gt = iou_lib.valid_gt(gt_boxes)
  if resolve_method(multi_contour, method) == "components":
    if len(gt) == 0:
      raise ValueError("an image has no ground-truth box")
    u = boxes_lib.quantize(scoremap)
    t = boxes_lib.integer_thresholds(int(u.max()) if u.size else 0, thresholds)
    return components_lib.best_ious(u, t, gt)
  tb = boxes_lib.threshold_boxes(scoremap, thresholds, multi_contour=multi_contour)
  per_mask = np.maximum.reduceat(iou_lib.max_iou(tb.boxes, gt), tb.offsets)
  return per_mask[tb.mask_index]


@functools.lru_cache(maxsize=None)
def _executor(num_threads: int) -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="wsol_eval")


def parallel_map(fn: Callable[[int], np.ndarray], n: int, num_threads: int) -> list[np.ndarray]:
  """``[fn(i) for i in range(n)]`` on a shared thread pool (OpenCV and numpy release the GIL)."""
  if num_threads <= 1 or n <= 1:
    return [fn(i) for i in range(n)]
  return list(_executor(num_threads).map(fn, range(n)))


@dataclasses.dataclass(frozen=True)
class BoxAccuracyResult:
  """Final numbers of a ``BoxAccuracy`` run (percent unless stated otherwise).

  Attributes:
    iou_thresholds: (n_iou,) IoU thresholds δ in percent.
    thresholds: (K,) score-map thresholds τ.
    num_correct: (n_iou, K) int64 images with best IoU >= δ/100 at each τ.
    count: number of accumulated images N.
    box_acc: (n_iou, K) float64 ``100·num_correct/N``.
    max_box_acc: (n_iou,) float64 ``max_k box_acc`` (MaxBoxAcc at each δ).
    optimal_index: (n_iou,) int64 first argmax over τ of each δ.
    optimal_threshold: (n_iou,) float64 ``thresholds[optimal_index]``.
    mean_best_iou: (K,) float64 mean over images of the best IoU at each τ (a fraction).
  """

  iou_thresholds: tuple[float, ...]
  thresholds: np.ndarray
  num_correct: np.ndarray
  count: int
  box_acc: np.ndarray
  max_box_acc: np.ndarray
  optimal_index: np.ndarray
  optimal_threshold: np.ndarray
  mean_best_iou: np.ndarray

  @property
  def max_box_acc_v2(self) -> float:
    """Mean of ``max_box_acc`` over the IoU thresholds (MaxBoxAccV2 for V2 boxes)."""
    return float(np.mean(self.max_box_acc))

  @property
  def miou(self) -> np.ndarray:
    """(n_iou,) mean best IoU at each δ's optimal τ (RFGA's "mIoU at the optimal τ")."""
    return self.mean_best_iou[self.optimal_index]

  def max_box_acc_at(self, iou_threshold: float) -> float:
    """MaxBoxAcc at one IoU threshold δ (percent), e.g. ``max_box_acc_at(50)`` for V1."""
    return float(self.max_box_acc[self.iou_thresholds.index(iou_threshold)])


class BoxAccuracy:
  """Accumulates MaxBoxAcc / MaxBoxAccV2 counters over batches of score maps.

  ``multi_contour=True`` (wsolevaluation's default ``box_v2_metric``) mines V2 boxes; use
  ``multi_contour=False`` with δ = 50 for the CVPR'20 MaxBoxAcc (V1). The RFGA paper reports
  V1 boxes at ``iou_thresholds=(50, 60, 70, 80, 90)``. V2 uses the connected-component sweep
  unless ``method="contours"``; both give identical numbers.
  """

  def __init__(self, thresholds: Sequence[float] | np.ndarray | None = None, *,
               delta: float = 0.01, iou_thresholds: Sequence[float] = (30, 50, 70),
               multi_contour: bool = True, num_threads: int = 1, method: str | None = None):
    """Creates the accumulator.

    Args:
      thresholds: score-map thresholds τ; default ``np.arange(0, 1, delta)``.
      delta: threshold step (``cam_curve_interval``) used when ``thresholds`` is None.
      iou_thresholds: IoU thresholds δ in percent, compared as ``IoU >= δ/100``.
      multi_contour: V2 (all contours) instead of V1 (largest contour).
      num_threads: worker threads over the maps of a batch (both methods release the GIL;
        with ``contours`` each map makes ~100 short cv2 calls, so on a busy 2-core machine
        threads measured slower); raise it on idle multi-core hosts. Results do not depend
        on it.
      method: ``"components"`` (V2 default: numba connected components) or ``"contours"``
        (OpenCV ``findContours``; the only V1 method).
    """
    self.thresholds = (boxes_lib.cam_thresholds(delta) if thresholds is None
                       else np.asarray(thresholds, dtype=np.float64))
    self.iou_thresholds = tuple(iou_thresholds)
    self.multi_contour = multi_contour
    self.method = resolve_method(multi_contour, method)
    self.num_threads = max(1, int(num_threads))
    self.reset()

  def reset(self) -> None:
    """Clears the counters."""
    self._num_correct = np.zeros((len(self.iou_thresholds), len(self.thresholds)), np.int64)
    self._iou_sum = np.zeros(len(self.thresholds), np.float64)
    self._count = 0

  def update(self, scoremaps: np.ndarray, gt_boxes: np.ndarray,
             valid: np.ndarray | None = None) -> np.ndarray:
    """Adds a batch.

    Args:
      scoremaps: (B, H, W) float maps in [0, 1] (cast to float64, as the evaluator requires).
      gt_boxes: (B, G, 4) int ``[x0, y0, x1, y1]`` on the map grid, ``-1``-padded rows.
      valid: optional (B,) bool; False rows (e.g. batch padding) are ignored.

    Returns:
      (B, K) float64 best IoU per map and threshold (NaN on rows with ``valid`` False).

    Raises:
      ValueError: a map is NaN or outside [0, 1], or an image has no GT box.
      RuntimeError: a GT box is invalid (negative or ``x1 < x0``).
    """
    maps = np.asarray(scoremaps, dtype=np.float64)
    gt = np.asarray(gt_boxes)
    if maps.ndim != 3 or gt.ndim != 3 or gt.shape[0] != maps.shape[0] or gt.shape[2] != 4:
      raise ValueError(f"expected maps (B, H, W) and gt boxes (B, G, 4); got {maps.shape}, "
                       f"{gt.shape}")
    rows = (np.arange(len(maps)) if valid is None
            else np.flatnonzero(np.asarray(valid, dtype=bool)))
    best = np.full((len(maps), len(self.thresholds)), np.nan)
    if len(rows) == 0:
      return best
    all_rows = len(rows) == len(maps)
    if self.method == "components":
      # One numba pass per map quantises, checks and evaluates; errors are raised (before any
      # counter changes) in the order of the contour path: maps first, then GT boxes.
      kept_maps, kept_gt = (maps, gt) if all_rows else (maps[rows], gt[rows])
      chunks = np.array_split(np.arange(len(rows)), min(self.num_threads, len(rows)))
      results = parallel_map(
          lambda j: components_lib.evaluate_maps(kept_maps[chunks[j]], self.thresholds,
                                                 kept_gt[chunks[j]]),
          len(chunks), self.num_threads)
      stats = np.concatenate([r[1] for r in results])
      if stats[:, 2].any():
        raise ValueError("Scoremap must not contain nans.")
      low, high = stats[:, 0].min(), stats[:, 1].max()
      if low < 0 or high > 1:
        raise ValueError(f"Scoremap must be in range [0, 1]; min={low}, max={high}.")
      check_gt_batch(kept_gt)
      best[rows] = np.concatenate([r[0] for r in results])
    else:
      check_scoremaps(maps if all_rows else maps[rows])
      results = parallel_map(
          lambda j: best_iou_per_threshold(maps[rows[j]], gt[rows[j]], self.thresholds,
                                           multi_contour=self.multi_contour,
                                           method="contours"),
          len(rows), self.num_threads)
      best[rows] = np.stack(results)
    kept = best[rows]
    for j, delta_iou in enumerate(self.iou_thresholds):
      self._num_correct[j] += (kept >= delta_iou / 100).sum(axis=0)
    self._iou_sum += kept.sum(axis=0)
    self._count += len(rows)
    return best

  def compute(self) -> BoxAccuracyResult:
    """Returns MaxBoxAcc per IoU threshold and the per-threshold counters.

    Raises:
      ValueError: nothing was accumulated.
    """
    if self._count == 0:
      raise ValueError("BoxAccuracy.compute() called before any update()")
    box_acc = self._num_correct * 100. / float(self._count)
    optimal = box_acc.argmax(axis=1)
    return BoxAccuracyResult(
        iou_thresholds=self.iou_thresholds, thresholds=self.thresholds.copy(),
        num_correct=self._num_correct.copy(), count=self._count, box_acc=box_acc,
        max_box_acc=box_acc.max(axis=1), optimal_index=optimal,
        optimal_threshold=self.thresholds[optimal], mean_best_iou=self._iou_sum / self._count)
