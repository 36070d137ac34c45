"""Evaluators in the big_vision shape: built from a method and a config, ``run(variables)``
yields ``(name, value)`` pairs.

``LocalizationEvaluator`` runs one pass over a split:

* device (jitted, sharded over the mesh): normalise images, the method's map for the
  ground-truth class (wsolevaluation's GT-known setting), resize to the eval image size
  with the method's official interpolation and min-max per map; logits;
* host (OpenCV, threads): boxes at every threshold ``np.arange(0, 1, Δ)`` and best IoUs,
  accumulated in constant memory; the host work of batch t overlaps the device work of
  batch t+1.

Metrics (percent):

``maxboxacc_v2`` (+ ``_iou30/50/70``)   wsolevaluation MaxBoxAccV2: all contours, mean over δ.
``gt_known``                           MaxBoxAcc (V1, largest contour) at IoU 50 = GT-known Loc
                                       at the optimal threshold.
``top1_loc``                           correct top-1 class and V1 IoU ≥ 0.5, at the threshold
                                       that maximises it (SCM's oracle-τ protocol; the
                                       ground-truth map equals the predicted map when correct).
``cls_top1``, ``cls_top5``             classification accuracy.
``pxap``                               pixel average precision (datasets with masks).
``<paper>_*`` (``protocols``)           the papers' own protocols (``wsol_jax.eval.protocols``):
                                       ``eval.protocols`` or the method's ``eval_protocols``.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wsol_jax import data as data_lib
from wsol_jax import sharding
from wsol_jax.eval import boxes as boxes_lib
from wsol_jax.eval import iou as iou_lib
from wsol_jax.eval import protocols as protocols_lib
from wsol_jax.eval.box_accuracy import BoxAccuracy
from wsol_jax.maps import postprocess

log = logging.getLogger("wsol_jax.eval")

# Host batch fields the metrics read (the rest, e.g. image ids, stay process-local).
_GATHERED_FIELDS = ("label", "boxes", "valid", "index", "mask")


def _gather_host_batch(batch: dict[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Multi-process runs: each process reads its own rows of a split. The metric fields
  of all processes, assembled like the images (``sharding.global_batch``), so their rows
  line up with the gathered maps. A single process gets its batch back unchanged."""
  if jax.process_count() == 1:
    return batch
  fields = {k: batch[k] for k in _GATHERED_FIELDS if k in batch}
  gathered = sharding.global_batch(fields, mesh)
  return {**batch, **{k: sharding.to_host(v) for k, v in gathered.items()}}


class LocalizationEvaluator:
  """Box, classification (and pixel) metrics of a method on one split."""

  def __init__(self, method: Any, config: ml_collections.ConfigDict, split: str,
               mesh: jax.sharding.Mesh | None = None, protocols: bool = False,
               progress: bool = False):
    """Creates the evaluator.

    Args:
      protocols: also run the papers' own protocols (``config.eval.protocols``, default
        the method's ``eval_protocols``; see ``wsol_jax.eval.protocols``).
      progress: show a progress bar over the batches.
    """
    self.method = method
    names = protocols_lib.resolve_names(config.eval, method)
    self.protocol_names = names if protocols else ()
    protocols_lib.check_supported(self.protocol_names)
    self.protocols = bool(self.protocol_names)
    self.progress = progress
    self.config = config
    self.split = split
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    ev = config.eval
    self.batch_size = int(ev.batch_size)
    n_dev = self.mesh.devices.size
    if self.batch_size % n_dev:
      self.batch_size = max(n_dev, self.batch_size // n_dev * n_dev)
    self.iterator = data_lib.build_eval_iterator(config.data, split, self.batch_size)
    self.kind = str(ev.map_kind) or method.map_kinds[0]
    self.upsample = str(ev.upsample) or method.upsample
    self.delta = float(ev.cam_curve_interval)
    self.iou_thresholds = tuple(int(t) for t in ev.iou_thresholds)
    size = config.data.image_size
    self.map_size = (size, size) if isinstance(size, int) else tuple(size)
    self._predict = jax.jit(self._device_fn, static_argnames=("topk_maps",))
    self._normalize = jax.jit(lambda images: postprocess.normalize_images(
        images, method.mean, method.std))
    self.last_best_iou: np.ndarray | None = None
    self._topk = False

  # -- device ---------------------------------------------------------------------------------
  def _device_fn(self, variables: Any, images: jax.Array, labels: jax.Array,
                 topk_maps: bool = False):
    """Ground-truth-class maps (B, H, W) in [0, 1], top-5 classes (and their maps)."""
    x = postprocess.normalize_images(images, self.method.mean, self.method.std)
    kind = None if self.kind == self.method.map_kinds[0] else self.kind
    maps, logits = self.method.maps(variables, x, labels, kind=kind)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    extra = None
    if maps.ndim == 4:  # every class: keep the ground-truth one (and the top-5 predicted)
      if topk_maps:
        picked = jnp.take_along_axis(maps, top5[:, :, None, None], axis=1)
        extra = postprocess.resize_and_normalize(picked.astype(jnp.float32), self.map_size,
                                                 self.upsample)
      maps = jnp.take_along_axis(maps, labels[:, None, None, None].astype(jnp.int32), axis=1)[:, 0]
    maps = postprocess.resize_and_normalize(maps.astype(jnp.float32), self.map_size, self.upsample)
    return maps, top5, extra

  def _batches(self, variables: Any) -> Iterator[tuple[dict[str, np.ndarray], Any]]:
    """Yields (host batch, device outputs) with one batch of look-ahead on the device."""
    pending = None
    for batch in self.iterator:
      arrays = sharding.global_batch({"image": batch["image"], "label": batch["label"]}, self.mesh)
      out = self._predict(variables, arrays["image"], arrays["label"], topk_maps=self._topk)
      if pending is not None:
        yield pending
      pending = (batch, out, arrays)
    if pending is not None:
      yield pending

  # -- host -----------------------------------------------------------------------------------
  def run(self, variables: Any) -> Iterator[tuple[str, float]]:
    """One pass over the split; yields ``(metric name, value)``."""
    v2 = BoxAccuracy(delta=self.delta, iou_thresholds=self.iou_thresholds, multi_contour=True)
    v1 = BoxAccuracy(delta=self.delta, iou_thresholds=(50,), multi_contour=False)
    pxap = _maybe_pxap(self.iterator, self.delta)
    n, top1, top5 = 0, 0, 0
    loc_correct = np.zeros(len(v1.thresholds), np.int64)
    ious = []
    limit = int(self.config.eval.max_examples)
    active = protocols_lib.build(self.protocol_names, self.config.eval, self.method.num_classes,
                                 self.method.maps_all_classes)
    predict = jax.jit(lambda x: self.method.predict(variables, x))
    for protocol in active:
      protocol.start(predict)
    self._topk = any(p.needs_topk_maps for p in active)
    from tqdm.auto import tqdm
    bar = tqdm(total=len(self.iterator), desc=f"eval {self.split}", unit="batch", leave=False,
               disable=not self.progress)
    for batch, (maps, top5_idx, topk_maps), arrays in self._batches(variables):
      bar.update(1)
      batch = _gather_host_batch(batch, self.mesh)
      valid = np.asarray(batch["valid"], bool)
      maps = sharding.to_host(maps).astype(np.float64)
      labels = np.asarray(batch["label"])
      top5_idx = sharding.to_host(top5_idx)
      best_v2 = v2.update(maps, batch["boxes"], valid)
      best_v1 = v1.update(maps, batch["boxes"], valid)
      correct1 = top5_idx[:, 0] == labels
      loc_correct += ((best_v1[valid] >= 0.5) & correct1[valid, None]).sum(0)
      top1 += int(correct1[valid].sum())
      top5 += int((top5_idx == labels[:, None]).any(1)[valid].sum())
      n += int(valid.sum())
      # (index, best IoU per threshold) per image, for picking best/worst overlays later.
      ious.append(np.concatenate([np.asarray(batch["index"])[valid][:, None], best_v2[valid]], 1))
      if pxap is not None and "mask" in batch:
        pxap.update(maps, np.asarray(batch["mask"]), valid)
      if active:
        if topk_maps is not None:
          topk_maps = sharding.to_host(topk_maps).astype(np.float64)
        ctx = protocols_lib.BatchContext(
            maps=maps, topk_maps=topk_maps,
            top5=top5_idx, labels=labels, boxes=np.asarray(batch["boxes"]), valid=valid,
            normalized_images=lambda a=arrays: self._normalize(a["image"]))
        for protocol in active:
          protocol.update(ctx)
      if limit and n >= limit:
        break
    bar.close()
    if n == 0:
      raise ValueError(f"no valid images in split {self.split!r}")
    self.last_best_iou = np.concatenate(ious, 0) if ious else None
    r2, r1 = v2.compute(), v1.compute()
    yield "maxboxacc_v2", r2.max_box_acc_v2
    for t, acc in zip(r2.iou_thresholds, r2.max_box_acc):
      yield f"maxboxacc_v2_iou{t}", float(acc)
    yield "gt_known", r1.max_box_acc_at(50)
    yield "top1_loc", float(loc_correct.max() * 100.0 / n)
    yield "cls_top1", top1 * 100.0 / n
    yield "cls_top5", top5 * 100.0 / n
    yield "optimal_threshold_iou50", float(r2.optimal_threshold[list(r2.iou_thresholds).index(50)]
                                           if 50 in r2.iou_thresholds else r2.optimal_threshold[0])
    if pxap is not None and pxap.pos_hist.sum() > 0:
      yield "pxap", float(pxap.compute())
    for protocol in active:
      yield from protocol.results()
    yield "num_examples", float(n)
    yield "num_skipped", float(self.iterator.num_skipped)

  def run_baseline(self) -> Iterator[tuple[str, float]]:
    """The center-Gaussian baseline map (same for every image) through the same box metrics."""
    from wsol_jax.eval import baselines
    gauss = baselines.center_gaussian(*self.map_size)
    thresholds = boxes_lib.cam_thresholds(self.delta)
    tb2 = boxes_lib.threshold_boxes(gauss, thresholds, multi_contour=True)
    tb1 = boxes_lib.threshold_boxes(gauss, thresholds, multi_contour=False)
    correct2 = np.zeros((len(self.iou_thresholds), len(thresholds)), np.int64)
    correct1 = np.zeros(len(thresholds), np.int64)
    n = 0
    for batch in (_gather_host_batch(b, self.mesh) for b in self.iterator):
      for gt, ok in zip(np.asarray(batch["boxes"]), np.asarray(batch["valid"], bool)):
        if not ok:
          continue
        gt = iou_lib.valid_gt(gt)
        best2 = np.maximum.reduceat(iou_lib.max_iou(tb2.boxes, gt), tb2.offsets)[tb2.mask_index]
        best1 = np.maximum.reduceat(iou_lib.max_iou(tb1.boxes, gt), tb1.offsets)[tb1.mask_index]
        correct2 += np.stack([best2 >= t / 100 for t in self.iou_thresholds])
        correct1 += best1 >= 0.5
        n += 1
    acc2 = correct2.max(1) * 100.0 / n
    yield "maxboxacc_v2", float(acc2.mean())
    for t, a in zip(self.iou_thresholds, acc2):
      yield f"maxboxacc_v2_iou{t}", float(a)
    yield "gt_known", float(correct1.max() * 100.0 / n)

  def write_overlays(self, variables: Any, out_dir: pathlib.Path, count: int) -> list[pathlib.Path]:
    """Overlay PNGs of the best and worst images of the last ``run`` for a person to look at.

    Images are ranked by their V2 IoU at the threshold that is optimal for IoU 50; each
    PNG shows the heatmap on the original image, the ground-truth boxes (blue) and the
    predicted box at that threshold (green).
    """
    if count <= 0 or self.last_best_iou is None or len(self.last_best_iou) == 0:
      return []
    from PIL import Image

    from wsol_jax import viz
    from wsol_jax.data import transforms
    table = self.last_best_iou
    k = int(np.argmax(np.mean(table[:, 1:] >= 0.5, axis=0)))
    threshold = k * self.delta
    order = np.argsort(table[:, 1 + k], kind="stable")
    picks = [("worst", r) for r in order[:count // 2]] + [("best", r) for r in order[::-1][:count - count // 2]]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = self.iterator.source
    row_fn = transforms.EvalRow(self.map_size, self.iterator.info.max_boxes, False)
    written = []
    for tag, r in picks:
      index = int(table[r, 0])
      record = source[index]
      row = row_fn.map(record)
      maps, _, _ = self._predict(variables, jnp.asarray(row["image"][None]),
                                 jnp.asarray([int(row["label"])], jnp.int32))
      image = np.asarray(record["image"])
      heat = postprocess.resize_and_normalize_host(np.asarray(maps[0]), image.shape[:2], self.upsample)
      box = viz.largest_contour_box(heat, threshold)
      picture = viz.show_cam_on_image(image, heat)
      picture = viz.draw_boxes(picture, np.round(record["boxes"]).astype(np.int64), color=(0, 0, 255))
      picture = viz.draw_boxes(picture, box[None], color=(0, 255, 0))
      path = out_dir / f"{tag}_{index:06d}_iou{table[r, 1 + k]:.2f}.png"
      Image.fromarray(picture).save(path)
      written.append(path)
    return written


def _maybe_pxap(iterator: Any, delta: float):
  if not getattr(iterator.info, "has_masks", False):
    return None
  try:
    from wsol_jax.eval.pxap import PxAP
  except ImportError:
    return None
  return PxAP(delta=delta)
