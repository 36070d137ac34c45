"""The papers' own evaluation protocols, as accumulators the evaluator feeds batch by batch.

Every protocol sees the same per-batch context (ground-truth-class maps resized to the
eval grid and min-max normalised, top-5 predictions, boxes, labels) and yields
``(name, value)`` pairs prefixed with the paper's name:

=========== ==================================================================================
``tscam``   TS-CAM: one box per top-5 predicted-class map at a fixed ``eval.cam_threshold``;
            Top-1/5 Loc (IoU > 0.5) and GT-known (IoU ≥ 0.5). Needs maps of every class.
``scm``     SCM: V1 boxes of the top-5 predicted-class maps at every τ; Top-1/5 Loc and
            "GT-Known" (top-1 predicted map) at the best τ. Needs maps of every class.
``vitol``   ViTOL: V2 boxes at one fixed score threshold ``eval.fixed_threshold`` (0.165 for
            DeiT-S GAR, …): box accuracy per IoU, their mean, Top-1 Loc at IoU 50.
``agcam``   AG-CAM: pixel accuracy / IoU / dice / precision / recall of the union of all
            external-contour boxes of ``map > eval.pixel_threshold`` over correctly classified
            images; ABPC (LeRF − MoRF, 11 steps, removed pixels = 0 in normalised space).
``rfga``    RFGA: MaxBoxAcc with V1 boxes at IoU ``eval.rfga_iou_thresholds`` (50…90), their
            mean, and the mIoU at the threshold that maximises it.
``sat``     SAT (``evaluator.py``): at each of ``eval.sat_thresholds`` the box of the largest
            8-connected component of ``map > τ`` (the whole image if none); GT-known
            (IoU ≥ 0.5), Top-1/5 Loc and box accuracy at IoU 30/50/70 at the τ that
            maximises GT-known + Top-1 Loc.
=========== ==================================================================================
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import cv2
import jax
import numpy as np

from wsol_jax.eval import iou as iou_lib
from wsol_jax.eval import localization
from wsol_jax.eval.box_accuracy import BoxAccuracy
from wsol_jax.eval.perturbation import PerturbationTest
from wsol_jax.eval.pixel_metrics import AgCamPixelMetrics


@dataclasses.dataclass
class BatchContext:
  """What the evaluator knows about one batch (host arrays; ``valid`` marks real rows)."""
  maps: np.ndarray           # (B, H, W) float64 ground-truth-class maps in [0, 1]
  topk_maps: np.ndarray | None  # (B, 5, H, W) maps of the top-5 predicted classes
  top5: np.ndarray           # (B, 5) predicted classes, most confident first
  labels: np.ndarray         # (B,)
  boxes: np.ndarray          # (B, G, 4) GT boxes on the map grid, -1 padded
  valid: np.ndarray          # (B,) bool
  normalized_images: Callable[[], jax.Array]  # (B, H, W, 3) model inputs, on demand
  index: np.ndarray | None = None  # (B,) dataset index of each row
  masks: np.ndarray | None = None  # (B, H, W) uint8 GT masks (datasets with masks)


class Protocol:
  """An accumulator over the batches of one evaluation pass (the evaluator's standard
  metrics share this interface)."""
  needs_topk_maps = False

  def start(self, predict_fn: Callable[[jax.Array], jax.Array]) -> None:
    """Called before a pass with the model's ``images -> logits`` for these variables."""

  def update(self, ctx: BatchContext) -> None:
    raise NotImplementedError

  def results(self) -> Iterator[tuple[str, float]]:
    raise NotImplementedError


class TsCamProtocol(Protocol):
  needs_topk_maps = True

  def __init__(self, cfg: Any):
    self.acc = localization.TsCamLocalization(cam_thr=float(cfg.cam_threshold))

  def update(self, ctx):
    self.acc.update(ctx.topk_maps, ctx.top5, ctx.labels, ctx.boxes, gt_maps=ctx.maps,
                    valid=ctx.valid)

  def results(self):
    r = self.acc.compute()
    yield from (("tscam_top1_loc", r.loc_top1), ("tscam_top5_loc", r.loc_top5),
                ("tscam_gt_known", r.gt_known))


class ScmProtocol(Protocol):
  needs_topk_maps = True

  def __init__(self, cfg: Any):
    self.acc = localization.ScmLocalization(delta=float(cfg.cam_curve_interval),
                                            iou_thresholds=tuple(cfg.iou_thresholds))

  def update(self, ctx):
    self.acc.update(ctx.topk_maps, ctx.top5, ctx.labels, ctx.boxes, valid=ctx.valid)

  def results(self):
    r = self.acc.compute()
    yield from (("scm_top1_loc", r.top1_loc), ("scm_top5_loc", r.top5_loc),
                ("scm_gt_known", r.gt_known_top1))


class FixedThresholdProtocol(Protocol):
  """ViTOL: wsolevaluation V2 boxes at one fixed score-map threshold."""

  def __init__(self, cfg: Any):
    tau = float(cfg.fixed_threshold)
    if not 0 < tau < 1:
      raise ValueError(f"the 'vitol' protocol needs eval.fixed_threshold in (0, 1), got {tau}")
    self.ious = tuple(int(t) for t in cfg.iou_thresholds)
    self.acc = BoxAccuracy(thresholds=[tau], iou_thresholds=self.ious, multi_contour=True)
    self.loc, self.n = 0, 0

  def update(self, ctx):
    best = self.acc.update(ctx.maps, ctx.boxes, ctx.valid)[:, 0]
    ok = ctx.valid & (ctx.top5[:, 0] == ctx.labels)
    self.loc += int((best[ok] >= 0.5).sum())
    self.n += int(ctx.valid.sum())

  def results(self):
    r = self.acc.compute()
    yield "vitol_boxacc_v2", float(np.mean(r.box_acc[:, 0]))
    for t, acc in zip(self.ious, r.box_acc[:, 0]):
      yield f"vitol_boxacc_iou{t}", float(acc)
    yield "vitol_top1_loc", self.loc * 100.0 / max(self.n, 1)


class AgCamProtocol(Protocol):
  """AG-CAM: pixel metrics over correctly classified images, and ABPC over every image."""

  def __init__(self, cfg: Any):
    self.pixels = AgCamPixelMetrics(threshold=float(cfg.pixel_threshold))
    self.abpc = bool(cfg.abpc)
    self.perturbation: PerturbationTest | None = None

  def start(self, predict_fn):
    if self.abpc:
      self.perturbation = PerturbationTest(predict_fn)

  def update(self, ctx):
    correct = ctx.top5[:, 0] == ctx.labels
    self.pixels.update(ctx.maps, ctx.boxes, correct=correct, valid=ctx.valid)
    if self.perturbation is not None:
      self.perturbation.update(ctx.normalized_images(), ctx.maps.astype(np.float32), ctx.labels,
                               valid=ctx.valid)

  def results(self):
    if self.pixels._count:
      r = self.pixels.compute()
      yield from (("agcam_pixel_acc", r.pixel_acc), ("agcam_iou", r.iou), ("agcam_dice", r.dice),
                  ("agcam_precision", r.precision), ("agcam_recall", r.recall),
                  ("agcam_num_correct", float(r.count)))
    if self.perturbation is not None:
      p = self.perturbation.compute()
      yield from (("abpc", p.abpc), ("auc_lerf", p.auc_lerf), ("auc_morf", p.auc_morf))


class RfgaProtocol(Protocol):
  """RFGA: V1 MaxBoxAcc at IoU 50…90 (each δ its own τ), their mean, mIoU at its best τ."""

  def __init__(self, cfg: Any):
    self.ious = tuple(int(t) for t in cfg.rfga_iou_thresholds)
    self.acc = BoxAccuracy(delta=float(cfg.cam_curve_interval), iou_thresholds=self.ious,
                           multi_contour=False)

  def update(self, ctx):
    self.acc.update(ctx.maps, ctx.boxes, ctx.valid)

  def results(self):
    r = self.acc.compute()
    for t, acc in zip(self.ious, r.max_box_acc):
      yield f"rfga_maxboxacc_iou{t}", float(acc)
    yield "rfga_maxboxacc_avg", float(np.mean(r.max_box_acc))
    yield "rfga_miou", float(np.max(r.mean_best_iou))


def largest_component_box(mask: np.ndarray) -> np.ndarray | None:
  """``[x0, y0, x1, y1]`` of the largest 8-connected component of a boolean mask, with
  exclusive ends as skimage's ``regionprops`` bbox (SAT then scores it with the inclusive
  +1 IoU, as its code does); ties: the first component in raster order. None if empty."""
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                              connectivity=8)
  if count <= 1:
    return None
  best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
  x, y, w, h = (int(v) for v in stats[best, :4])
  return np.array([x, y, x + w, y + h], np.int64)


class SatProtocol(Protocol):
  """SAT's ``val_loc_one_epoch``: largest-component boxes at a few fixed thresholds."""

  def __init__(self, cfg: Any):
    self.thresholds = tuple(float(t) for t in cfg.sat_thresholds)
    if not self.thresholds or not all(0 < t < 1 for t in self.thresholds):
      raise ValueError(f"the 'sat' protocol needs eval.sat_thresholds in (0, 1), got "
                       f"{self.thresholds}")
    self.ious: list[np.ndarray] = []    # (T,) best IoU per image
    self.top1: list[bool] = []
    self.top5: list[bool] = []

  def update(self, ctx):
    for i in np.flatnonzero(ctx.valid):
      m = ctx.maps[i]
      gt = iou_lib.valid_gt(ctx.boxes[i])
      full = np.array([0, 0, m.shape[1], m.shape[0]], np.int64)
      boxes = [largest_component_box(m > t) for t in self.thresholds]
      boxes = np.stack([full if b is None else b for b in boxes])
      self.ious.append(iou_lib.max_iou(boxes, gt))
      self.top1.append(bool(ctx.top5[i, 0] == ctx.labels[i]))
      self.top5.append(bool((ctx.top5[i] == ctx.labels[i]).any()))

  def results(self):
    ious = np.stack(self.ious) if self.ious else np.zeros((0, len(self.thresholds)))
    top1, top5 = np.asarray(self.top1, bool)[:, None], np.asarray(self.top5, bool)[:, None]
    located = ious >= 0.5
    gt_known, top1_loc = 100 * located.mean(0), 100 * (located & top1).mean(0)
    best = int(np.argmax(gt_known + top1_loc))  # first on ties, as the official loop
    yield "sat_top1_loc", float(top1_loc[best])
    yield "sat_top5_loc", float(100 * (located & top5).mean(0)[best])
    yield "sat_gt_known", float(gt_known[best])
    for t in (30, 50, 70):
      yield f"sat_boxacc_iou{t}", float(100 * (ious[:, best] >= t / 100).mean())
    yield "sat_threshold", self.thresholds[best]


PROTOCOLS: dict[str, type[Protocol]] = {
    "tscam": TsCamProtocol, "scm": ScmProtocol, "vitol": FixedThresholdProtocol,
    "agcam": AgCamProtocol, "rfga": RfgaProtocol, "sat": SatProtocol,
}


def resolve_names(eval_cfg: Any, method: Any) -> tuple[str, ...]:
  """The protocols an evaluation runs: ``eval.protocols``, else the method's own."""
  return tuple(eval_cfg.protocols) or tuple(method.eval_protocols)


def check_supported(names: Sequence[str]) -> None:
  """Fails, before any compute, on protocol names that do not exist."""
  unknown = [n for n in names if n not in PROTOCOLS]
  if unknown:
    raise ValueError(f"eval.protocols: unknown evaluation protocol(s) {unknown}; "
                     f"valid: {sorted(PROTOCOLS)}")


def build(names, cfg: Any, num_classes: int, all_classes: bool) -> list[Protocol]:
  """Protocol accumulators by name; those needing every class's maps are skipped otherwise."""
  out = []
  check_supported(names)
  for name in names:
    cls = PROTOCOLS[name]
    if cls.needs_topk_maps and (not all_classes or num_classes < 5):
      continue
    out.append(cls(cfg))
  return out
