"""GT-known / Top-1 / Top-5 Loc in the TS-CAM (fixed threshold) and SCM (threshold sweep) forms.

Both take the maps of the top-K predicted classes (already resized to the GT grid and min-max
normalised by the caller) with their class indices, most confident first.

* ``TsCamLocalization`` (vasgaowei/TS-CAM ``lib/cams_deit.py``): one box per map at
  ``CAM_THR`` (largest contour, unclipped ``[x, y, x+w, y+h]``). Top-k Loc = the GT class is
  among the first k predictions AND its box has IoU **> 0.5** (strict); GT-known = the box of
  the GT-class map has IoU **>= 0.5**.
* ``ScmLocalization`` (hbai98/SCM ``tools_cam/test_cam.py``): wsolevaluation V1 boxes of every
  top-k map at every τ; ``det_j[τ] = IoU*_j(τ) >= δ`` for any predicted class; ``det@k`` is the
  OR over the first k maps and ``loc@k`` additionally needs the top-1 prediction to be correct
  (the official code gates every k by ``argmax == GT``; ``loc_gate="per_class"`` instead gates
  map j by ``pred_j == GT``). Every number is a max over τ (test-set oracle threshold); SCM's
  "GT-Known" is ``det@1`` at δ = 50, i.e. the top-1 *predicted* class map.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from wsol_jax.eval import box_accuracy as box_acc_lib
from wsol_jax.eval import boxes as boxes_lib
from wsol_jax.eval import iou as iou_lib


def top_k_indices(logits: np.ndarray, k: int = 5) -> np.ndarray:
  """(B, C) scores -> (B, k) class indices, highest first (ties: lower index first)."""
  logits = np.asarray(logits)
  return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def classification_correct(topk_idx: np.ndarray, labels: np.ndarray,
                           topk: Sequence[int] = (1, 5)) -> np.ndarray:
  """(B, K) predictions and (B,) labels -> (len(topk), B) bool: label among the first k."""
  hit = np.asarray(topk_idx) == np.asarray(labels)[:, None]
  return np.stack([hit[:, :k].any(axis=1) for k in topk])


def _check_inputs(topk_maps: np.ndarray, topk_idx: np.ndarray, labels: np.ndarray,
                  gt_boxes: np.ndarray, min_k: int) -> None:
  b, k = topk_maps.shape[:2]
  if topk_maps.ndim != 4 or topk_idx.shape != (b, k) or labels.shape != (b,):
    raise ValueError(f"expected maps (B, K, H, W), indices (B, K), labels (B,); got "
                     f"{topk_maps.shape}, {topk_idx.shape}, {labels.shape}")
  if gt_boxes.ndim != 3 or gt_boxes.shape[0] != b or gt_boxes.shape[2] != 4:
    raise ValueError(f"expected gt boxes (B, G, 4); got {gt_boxes.shape}")
  if k < min_k:
    raise ValueError(f"need the maps of at least {min_k} classes, got {k}")


@dataclasses.dataclass(frozen=True)
class TsCamResult:
  """TS-CAM metrics in percent over ``count`` images."""

  count: int
  cls_top1: float
  cls_top5: float
  loc_top1: float
  loc_top5: float
  gt_known: float


class TsCamLocalization:
  """Accumulates TS-CAM's Cls@1/5, Top-1/5 Loc and GT-known Loc (fixed CAM_THR)."""

  def __init__(self, cam_thr: float = 0.2, iou_threshold: float = 0.5):
    """Creates the accumulator.

    Args:
      cam_thr: TS-CAM's ``MODEL.CAM_THR`` (code default 0.2; CUB config 0.1, ILSVRC 0.12).
      iou_threshold: IoU threshold (strict for Top-k Loc, inclusive for GT-known).
    """
    self.cam_thr = float(cam_thr)
    self.iou_threshold = float(iou_threshold)
    self.reset()

  def reset(self) -> None:
    """Clears the counters."""
    self._sums = np.zeros(5, np.int64)  # cls1, cls5, loc1, loc5, gt_known
    self._count = 0

  def update(self, topk_maps: np.ndarray, topk_idx: np.ndarray, labels: np.ndarray,
             gt_boxes: np.ndarray, gt_maps: np.ndarray | None = None,
             valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Adds a batch.

    Args:
      topk_maps: (B, K>=5, H, W) maps of the top-K predicted classes (TS-CAM: float32).
      topk_idx: (B, K) their class indices, most confident first.
      labels: (B,) GT labels.
      gt_boxes: (B, G, 4) int GT boxes on the map grid, ``-1``-padded rows.
      gt_maps: optional (B, H, W) GT-class maps for GT-known; when None the GT class must be
        among the K predictions (its map is taken from ``topk_maps``).
      valid: optional (B,) bool mask of real rows.

    Returns:
      Per-image arrays: ``boxes`` (B, K, 4) int64, ``ious`` (B, K), ``gt_known_iou`` (B,).
    """
    maps = np.asarray(topk_maps)
    idx, labels, gt = np.asarray(topk_idx), np.asarray(labels), np.asarray(gt_boxes)
    _check_inputs(maps, idx, labels, gt, min_k=5)
    b, k = idx.shape
    hit = idx == labels[:, None]
    if gt_maps is None and not hit.any(axis=1).all():
      raise ValueError("gt_maps is required when the GT class is not among the K predictions")
    rows = np.arange(b) if valid is None else np.flatnonzero(np.asarray(valid, bool))
    boxes = np.zeros((b, k, 4), np.int64)
    ious = np.full((b, k), np.nan)
    gt_known_iou = np.full(b, np.nan)
    for i in rows:
      g = iou_lib.valid_gt(gt[i])
      boxes[i] = np.stack([boxes_lib.tscam_boxes(maps[i, j], self.cam_thr) for j in range(k)])
      ious[i] = iou_lib.max_iou(boxes[i], g)
      if gt_maps is None:
        gt_known_iou[i] = ious[i, np.argmax(hit[i])]
      else:
        gt_known_iou[i] = iou_lib.max_iou(
            boxes_lib.tscam_boxes(np.asarray(gt_maps[i]), self.cam_thr)[None], g)[0]
    cls = classification_correct(idx[rows], labels[rows])
    loc_ok = hit[rows] & (ious[rows] > self.iou_threshold)
    self._sums += np.array([cls[0].sum(), cls[1].sum(), loc_ok[:, :1].any(1).sum(),
                            loc_ok[:, :5].any(1).sum(),
                            (gt_known_iou[rows] >= self.iou_threshold).sum()])
    self._count += len(rows)
    return {"boxes": boxes, "ious": ious, "gt_known_iou": gt_known_iou}

  def compute(self) -> TsCamResult:
    """Returns the five accuracies in percent."""
    if self._count == 0:
      raise ValueError("TsCamLocalization.compute() called before any update()")
    acc = self._sums * 100. / self._count
    return TsCamResult(self._count, *map(float, acc))


@dataclasses.dataclass(frozen=True)
class ScmResult:
  """SCM metrics (percent) over ``count`` images; arrays are indexed [iou, k(, τ)].

  Attributes:
    count: number of images.
    iou_thresholds: (n_iou,) δ in percent.
    topk: (n_k,) the k of each row.
    thresholds: (T,) score-map thresholds.
    cls_acc: (n_k,) classification top-k accuracy.
    det_correct: (n_iou, n_k, T) int64 images with some of the first k maps localised.
    loc_correct: (n_iou, n_k, T) int64 the same, gated by the classification (``loc_gate``).
    maxbox_acc: (n_iou, n_k) ``max_τ det`` (SCM's ``maxbox_acc_thr_δ_top-k``).
    loc_acc: (n_iou, n_k) ``max_τ loc`` (SCM's ``loc_acc_thr_δ_top-k``).
    det_opt_threshold: (n_iou, n_k) τ of the first det maximum (``det_optThred``).
    loc_opt_threshold: (n_iou, n_k) τ of the first loc maximum (``loc_optThred``).
  """

  count: int
  iou_thresholds: tuple[float, ...]
  topk: tuple[int, ...]
  thresholds: np.ndarray
  cls_acc: np.ndarray
  det_correct: np.ndarray
  loc_correct: np.ndarray
  maxbox_acc: np.ndarray
  loc_acc: np.ndarray
  det_opt_threshold: np.ndarray
  loc_opt_threshold: np.ndarray

  def _at(self, table: np.ndarray, iou_threshold: float, k: int) -> float:
    return float(table[self.iou_thresholds.index(iou_threshold), self.topk.index(k)])

  @property
  def gt_known_top1(self) -> float:
    """SCM's ``GT-Known_top-1``: det@1 at δ = 50, max over τ."""
    return self._at(self.maxbox_acc, 50, 1)

  @property
  def top1_loc(self) -> float:
    """SCM's ``loc_acc_thr_50.00_top-1`` (Top-1 Loc at the oracle τ)."""
    return self._at(self.loc_acc, 50, 1)

  @property
  def top5_loc(self) -> float:
    """SCM's ``loc_acc_thr_50.00_top-5``."""
    return self._at(self.loc_acc, 50, 5)


class ScmLocalization:
  """Accumulates SCM's threshold-sweep GT-known / Top-k Loc / MaxBoxAcc counters."""

  def __init__(self, thresholds: Sequence[float] | np.ndarray | None = None, *,
               delta: float = 0.01, iou_thresholds: Sequence[float] = (30, 50, 70),
               topk: Sequence[int] = (1, 5), multi_contour: bool = False,
               loc_gate: str = "top1", num_threads: int = 1):
    """Creates the accumulator.

    Args:
      thresholds: score-map thresholds; default ``np.arange(0, 1, delta)``.
      delta: threshold step when ``thresholds`` is None (SCM: 0.01).
      iou_thresholds: δ in percent, compared with ``>=``.
      topk: the k of the Top-k rows (SCM: (1, 5)).
      multi_contour: V2 boxes (SCM uses V1, the default).
      loc_gate: "top1" (official code: loc needs ``argmax == GT`` for every k) or
        "per_class" (map j counts only where ``pred_j == GT``).
      num_threads: worker threads over the maps of a batch.
    """
    if loc_gate not in ("top1", "per_class"):
      raise ValueError(f"loc_gate must be 'top1' or 'per_class', got {loc_gate!r}")
    self.thresholds = (boxes_lib.cam_thresholds(delta) if thresholds is None
                       else np.asarray(thresholds, dtype=np.float64))
    self.iou_thresholds = tuple(iou_thresholds)
    self.topk = tuple(int(k) for k in topk)
    self.multi_contour = multi_contour
    self.loc_gate = loc_gate
    self.num_threads = int(num_threads)
    self.reset()

  def reset(self) -> None:
    """Clears the counters."""
    shape = (len(self.iou_thresholds), len(self.topk), len(self.thresholds))
    self._det = np.zeros(shape, np.int64)
    self._loc = np.zeros(shape, np.int64)
    self._cls = np.zeros(len(self.topk), np.int64)
    self._count = 0

  def update(self, topk_maps: np.ndarray, topk_idx: np.ndarray, labels: np.ndarray,
             gt_boxes: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Adds a batch.

    Args:
      topk_maps: (B, K, H, W) maps in [0, 1] of the top-K predicted classes, K >= max(topk)
        (validated and cast to float64 like wsolevaluation; a NaN map raises).
      topk_idx: (B, K) their class indices, most confident first.
      labels: (B,) GT labels.
      gt_boxes: (B, G, 4) int GT boxes on the map grid, ``-1``-padded rows.
      valid: optional (B,) bool mask of real rows.

    Returns:
      (B, max(topk), T) float64 best IoU of every map at every threshold (NaN on padding).
    """
    maps = np.asarray(topk_maps, dtype=np.float64)
    idx, labels, gt = np.asarray(topk_idx), np.asarray(labels), np.asarray(gt_boxes)
    max_k = max(self.topk)
    _check_inputs(maps, idx, labels, gt, min_k=max_k)
    rows = (np.arange(len(maps)) if valid is None
            else np.flatnonzero(np.asarray(valid, dtype=bool)))
    best = np.full((len(maps), max_k, len(self.thresholds)), np.nan)
    if len(rows) == 0:
      return best
    box_acc_lib.check_scoremaps(maps[rows, :max_k])
    jobs = [(i, j) for i in rows for j in range(max_k)]
    results = box_acc_lib.parallel_map(
        lambda n: box_acc_lib.best_iou_per_threshold(
            maps[jobs[n]], gt[jobs[n][0]], self.thresholds, multi_contour=self.multi_contour),
        len(jobs), self.num_threads)
    for (i, j), r in zip(jobs, results):
      best[i, j] = r
    hit = idx[rows, :max_k] == labels[rows, None]  # (b, max_k)
    gate = (np.repeat(hit[:, :1], max_k, axis=1) if self.loc_gate == "top1" else hit)
    for a, delta_iou in enumerate(self.iou_thresholds):
      det = best[rows] >= delta_iou / 100  # (b, max_k, T)
      loc = det & gate[:, :, None]
      for c, k in enumerate(self.topk):
        self._det[a, c] += det[:, :k].any(axis=1).sum(axis=0)
        self._loc[a, c] += loc[:, :k].any(axis=1).sum(axis=0)
    self._cls += classification_correct(idx[rows], labels[rows], self.topk).sum(axis=1)
    self._count += len(rows)
    return best

  def compute(self) -> ScmResult:
    """Returns the SCM tables (max over τ, first argmax for the optimal τ)."""
    if self._count == 0:
      raise ValueError("ScmLocalization.compute() called before any update()")
    det = self._det * 100. / float(self._count)
    loc = self._loc * 100. / float(self._count)
    return ScmResult(
        count=self._count, iou_thresholds=self.iou_thresholds, topk=self.topk,
        thresholds=self.thresholds.copy(), cls_acc=self._cls * 100. / self._count,
        det_correct=self._det.copy(), loc_correct=self._loc.copy(),
        maxbox_acc=det.max(axis=2), loc_acc=loc.max(axis=2),
        det_opt_threshold=self.thresholds[det.argmax(axis=2)],
        loc_opt_threshold=self.thresholds[loc.argmax(axis=2)])
