"""Evaluators in the big_vision shape: ``run(variables)`` yields ``(name, value)`` pairs.

``LocalizationEvaluator`` is built from a maps function, a predict function and the ``eval``
and ``data`` config sections (``for_method`` builds one from a method plug-in and a config,
so callers stay one line). One pass over a split:

* device (jitted, sharded over the mesh): normalise images, the map for the ground-truth
  class (wsolevaluation's GT-known setting), resize to the eval image size with the method's
  official interpolation and min-max per map; top-5 classes. Within ``eval.maps_memory_mb``
  per device (``wsol_jax.maps.budget``): a batch that does not fit runs in chunks;
* host: every metric is an accumulator with the interface of the papers' protocols
  (``wsol_jax.eval.protocols``): each batch becomes one ``BatchContext`` that every
  accumulator ``update``s from, and each yields its ``(name, value)`` pairs at the end. The
  metrics are counters of constant size (the overlays' per-image table keeps K IoUs per
  image); the box mining (OpenCV/numba, threads) of batch t overlaps the device work of
  batch t+1.

``evaluate(variables)`` returns a ``Report``: the metrics and ``PerImageIoU``, the per-image
table ``write_overlays`` ranks images by (passed to it explicitly; the evaluator keeps no
state between calls). ``run`` yields the report's metrics.

Metrics (percent):

``maxboxacc_v2`` (+ ``_iou30/50/70``)   wsolevaluation MaxBoxAccV2: all contours, mean over δ.
``optimal_threshold_iou50``            the score threshold τ of MaxBoxAccV2 at IoU 50 (a
                                       fraction, not percent).
``gt_known``                           MaxBoxAcc (V1, largest contour) at IoU 50 = GT-known Loc
                                       at the optimal threshold.
``top1_loc``                           correct top-1 class and V1 IoU ≥ 0.5, at the threshold
                                       that maximises it (SCM's oracle-τ protocol; the
                                       ground-truth map equals the predicted map when correct).
``cls_top1``, ``cls_top5``             classification accuracy.
``pxap``                               pixel average precision (datasets with masks).
``<paper>_*`` (``protocols``)           the papers' own protocols (``wsol_jax.eval.protocols``):
                                       ``eval.protocols`` or the method's ``eval_protocols``.
``num_examples``, ``num_skipped``      images evaluated; unreadable images left out.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from wsol_jax import data as data_lib
from wsol_jax import sharding
from wsol_jax.eval import boxes as boxes_lib
from wsol_jax.eval import iou as iou_lib
from wsol_jax.eval import protocols as protocols_lib
from wsol_jax.eval.box_accuracy import BoxAccuracy
from wsol_jax.eval.pxap import PxAP
from wsol_jax.maps import budget, postprocess

log = logging.getLogger("wsol_jax.eval")

# (variables, normalised NHWC images, targets (B,)) -> (raw maps, logits): maps (B, h, w) of
# the targets, or (B, C, h, w) of every class.
MapsFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
# (variables, normalised NHWC images) -> logits (B, C).
PredictFn = Callable[[Any, jax.Array], jax.Array]

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


# -- results --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PerImageIoU:
  """Each evaluated image's best V2 IoU at every score threshold, for picking overlays.

  Attributes:
    index: (N,) int64 dataset index of each image (``source[index]``).
    best_iou: (N, K) float64 best IoU over the V2 boxes and GT boxes at each threshold.
    thresholds: (K,) float64 score-map thresholds τ.
  """
  index: np.ndarray
  best_iou: np.ndarray
  thresholds: np.ndarray

  def __len__(self) -> int:
    return len(self.index)

  def optimal_index(self) -> int:
    """The threshold index where most images reach IoU 0.5 (the first on ties)."""
    return int(np.argmax(np.mean(self.best_iou >= 0.5, axis=0)))


@dataclasses.dataclass(frozen=True)
class Report:
  """One evaluation pass: ``metrics`` in the order ``run`` yields them, and the per-image
  table that ``write_overlays`` needs."""
  metrics: dict[str, float]
  per_image: PerImageIoU


# -- the standard metrics, as accumulators --------------------------------------------------------
class MaxBoxAccV2(protocols_lib.Protocol):
  """wsolevaluation MaxBoxAccV2 (every contour; each δ its own τ, mean over δ) and the
  optimal τ at IoU 50. Mining V2 boxes is the dominant host cost, so this accumulator also
  keeps each image's best IoUs (``per_image``) rather than having the overlays mine again."""

  def __init__(self, delta: float, iou_thresholds: Sequence[int]):
    self.acc = BoxAccuracy(delta=delta, iou_thresholds=tuple(iou_thresholds), multi_contour=True)
    self._index: list[np.ndarray] = []
    self._best: list[np.ndarray] = []

  def update(self, ctx):
    best = self.acc.update(ctx.maps, ctx.boxes, ctx.valid)
    self._index.append(np.asarray(ctx.index, np.int64)[ctx.valid])
    self._best.append(best[ctx.valid])

  def results(self):
    r = self.acc.compute()
    yield "maxboxacc_v2", r.max_box_acc_v2
    for t, acc in zip(r.iou_thresholds, r.max_box_acc):
      yield f"maxboxacc_v2_iou{t}", float(acc)
    at = list(r.iou_thresholds).index(50) if 50 in r.iou_thresholds else 0
    yield "optimal_threshold_iou50", float(r.optimal_threshold[at])

  def per_image(self) -> PerImageIoU:
    k = len(self.acc.thresholds)
    return PerImageIoU(
        index=np.concatenate(self._index) if self._index else np.zeros(0, np.int64),
        best_iou=np.concatenate(self._best) if self._best else np.zeros((0, k)),
        thresholds=self.acc.thresholds.copy())


class GtKnownTop1Loc(protocols_lib.Protocol):
  """V1 boxes (largest contour): GT-known Loc = MaxBoxAcc at IoU 50, and top-1 Loc (correct
  top-1 class and IoU ≥ 0.5) at the threshold that maximises it."""

  def __init__(self, delta: float):
    self.acc = BoxAccuracy(delta=delta, iou_thresholds=(50,), multi_contour=False)
    self.loc_correct = np.zeros(len(self.acc.thresholds), np.int64)
    self.count = 0

  def update(self, ctx):
    best = self.acc.update(ctx.maps, ctx.boxes, ctx.valid)
    correct1 = ctx.top5[:, 0] == ctx.labels
    self.loc_correct += ((best[ctx.valid] >= 0.5) & correct1[ctx.valid, None]).sum(0)
    self.count += int(ctx.valid.sum())

  def results(self):
    yield "gt_known", self.acc.compute().max_box_acc_at(50)
    yield "top1_loc", float(self.loc_correct.max() * 100.0 / self.count)


class Classification(protocols_lib.Protocol):
  """Top-1 and top-5 classification accuracy."""

  def __init__(self):
    self.top1, self.top5, self.count = 0, 0, 0

  def update(self, ctx):
    valid = ctx.valid
    self.top1 += int((ctx.top5[:, 0] == ctx.labels)[valid].sum())
    self.top5 += int((ctx.top5 == ctx.labels[:, None]).any(1)[valid].sum())
    self.count += int(valid.sum())

  def results(self):
    yield "cls_top1", self.top1 * 100.0 / self.count
    yield "cls_top5", self.top5 * 100.0 / self.count


class PixelAveragePrecision(protocols_lib.Protocol):
  """PxAP over the pixels of the batches that carry masks (nothing when no mask has a
  foreground pixel)."""

  def __init__(self, delta: float):
    self.acc = PxAP(delta=delta)

  def update(self, ctx):
    if ctx.masks is not None:
      self.acc.update(ctx.maps, ctx.masks, ctx.valid)

  def results(self):
    if self.acc.pos_hist.sum() > 0:
      yield "pxap", float(self.acc.compute())


# -- the evaluator --------------------------------------------------------------------------------
class LocalizationEvaluator:
  """Box, classification (and pixel) metrics of a maps function on one split."""

  def __init__(self, maps_fn: MapsFn, predict_fn: PredictFn,
               eval_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
               split: str, *, num_classes: int, mean: Sequence[float], std: Sequence[float],
               upsample: str = "bilinear", maps_all_classes: bool = False,
               protocols: Sequence[str] = (), mesh: jax.sharding.Mesh | None = None,
               progress: bool = False):
    """Creates the evaluator.

    Args:
      maps_fn: ``(variables, images, targets) -> (maps, logits)`` on normalised images.
      predict_fn: ``(variables, images) -> logits``; the protocols that run extra forwards
        (AG-CAM's ABPC) get it in ``start``.
      eval_config: the ``eval`` section (batch size, δ, IoU thresholds, ``max_examples`` and
        the protocols' settings).
      data_config: the ``data`` section the split's iterator is built from; its
        ``image_size`` is the grid maps are resized to.
      split: a split name (``'val'``, ``'test'``, a TFDS slice, ...).
      num_classes, maps_all_classes: decide which protocols can run (those that need the
        top-5 classes' maps need ``maps_all_classes`` and five classes).
      mean, std: the input normalisation of the model (images arrive as uint8).
      upsample: interpolation of the maps to the eval grid (``'bilinear'``/``'bicubic'``).
      protocols: names of the papers' protocols to run (``protocols.PROTOCOLS``).
      mesh: device mesh (default: every device on the data axis).
      progress: show a progress bar over the batches.
    """
    protocols_lib.check_supported(protocols)
    self.maps_fn = maps_fn
    self.predict_fn = predict_fn
    self.eval_config = eval_config
    self.split = split
    self.num_classes = int(num_classes)
    self.maps_all_classes = bool(maps_all_classes)
    self.upsample = str(upsample)
    self.protocol_names = tuple(protocols)
    self.progress = progress
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.batch_size = int(eval_config.batch_size)
    n_dev = self.mesh.devices.size
    if self.batch_size <= 0 or self.batch_size % n_dev:  # one rule for both batch sizes
      raise ValueError(f"eval.batch_size={self.batch_size} must be a positive multiple of the "
                       f"{n_dev} devices; e.g. {max(n_dev, self.batch_size // n_dev * n_dev)}")
    self.iterator = data_lib.build_eval_iterator(data_config, split, self.batch_size)
    self.delta = float(eval_config.cam_curve_interval)
    self.iou_thresholds = tuple(int(t) for t in eval_config.iou_thresholds)
    size = data_config.image_size
    self.map_size = (size, size) if isinstance(size, int) else tuple(size)
    self._normalize_images = functools.partial(postprocess.normalize_images,
                                               mean=tuple(mean), std=tuple(std))
    # Within eval.maps_memory_mb per device: a batch that does not fit runs in chunks.
    memory_mb = float(eval_config.maps_memory_mb)
    self._predict = {topk: budget.Budgeted(functools.partial(self._device_fn, topk_maps=topk),
                                           memory_mb) for topk in (False, True)}
    self._normalize = jax.jit(self._normalize_images)
    self._logits = jax.jit(predict_fn)

  # -- device ---------------------------------------------------------------------------------
  def _device_fn(self, variables: Any, images: jax.Array, labels: jax.Array,
                 topk_maps: bool = False):
    """Ground-truth-class maps (B, H, W) in [0, 1], top-5 classes (and their maps)."""
    maps, logits = self.maps_fn(variables, self._normalize_images(images), labels)
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

  def _batches(self, variables: Any, topk_maps: bool
               ) -> Iterator[protocols_lib.BatchContext]:
    """Contexts of the batches, with one batch of look-ahead on the device."""
    pending = None
    for batch in self.iterator:
      arrays = sharding.global_batch({"image": batch["image"], "label": batch["label"]}, self.mesh)
      out = self._predict[topk_maps](variables, arrays["image"], arrays["label"])
      if pending is not None:
        yield self._context(*pending)
      pending = (batch, out, arrays)
    if pending is not None:
      yield self._context(*pending)

  def _context(self, batch: dict[str, Any], out: tuple[Any, Any, Any],
               arrays: dict[str, jax.Array]) -> protocols_lib.BatchContext:
    """The host view of one batch that every accumulator reads."""
    maps, top5, topk_maps = out
    batch = _gather_host_batch(batch, self.mesh)
    masks = np.asarray(batch["mask"]) if "mask" in batch else None
    return protocols_lib.BatchContext(
        maps=sharding.to_host(maps).astype(np.float64),
        topk_maps=None if topk_maps is None else sharding.to_host(topk_maps).astype(np.float64),
        top5=sharding.to_host(top5), labels=np.asarray(batch["label"]),
        boxes=np.asarray(batch["boxes"]), valid=np.asarray(batch["valid"], bool),
        normalized_images=lambda: self._normalize(arrays["image"]),
        index=np.asarray(batch["index"]), masks=masks)

  # -- host -----------------------------------------------------------------------------------
  def evaluate(self, variables: Any) -> Report:
    """One pass over the split: every accumulator sees every batch."""
    box_v2 = MaxBoxAccV2(self.delta, self.iou_thresholds)
    accumulators = [box_v2, GtKnownTop1Loc(self.delta), Classification()]
    if getattr(self.iterator.info, "has_masks", False):
      accumulators.append(PixelAveragePrecision(self.delta))
    accumulators += protocols_lib.build(self.protocol_names, self.eval_config, self.num_classes,
                                        self.maps_all_classes)

    def predict(images):
      return self._logits(variables, images)

    for acc in accumulators:
      acc.start(predict)
    limit, n = int(self.eval_config.max_examples), 0
    from tqdm.auto import tqdm
    with tqdm(total=len(self.iterator), desc=f"eval {self.split}", unit="batch", leave=False,
              disable=not self.progress) as bar:
      for ctx in self._batches(variables, any(a.needs_topk_maps for a in accumulators)):
        bar.update(1)
        for acc in accumulators:
          acc.update(ctx)
        n += int(ctx.valid.sum())
        if limit and n >= limit:
          break
    if n == 0:
      raise ValueError(f"no valid images in split {self.split!r}")
    metrics = {name: value for acc in accumulators for name, value in acc.results()}
    metrics["num_examples"] = float(n)
    metrics["num_skipped"] = float(self.iterator.num_skipped)
    return Report(metrics, box_v2.per_image())

  def run(self, variables: Any) -> Iterator[tuple[str, float]]:
    """One pass over the split; yields ``(metric name, value)``."""
    yield from self.evaluate(variables).metrics.items()

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

  def write_overlays(self, variables: Any, per_image: PerImageIoU | None,
                     out_dir: os.PathLike, count: int) -> list[epath.Path]:
    """Overlay PNGs of the best and worst images of a pass, for a person to look at.

    Images are ranked by their V2 IoU in ``per_image`` (``evaluate(...).per_image``) at the
    threshold where most images reach IoU 0.5; each PNG shows the heatmap on the original
    image, the ground-truth boxes (blue) and the predicted box at that threshold (green).
    """
    if count <= 0 or per_image is None or len(per_image) == 0:
      return []
    from wsol_jax import files, viz
    from wsol_jax.data import transforms
    k = per_image.optimal_index()
    threshold = float(per_image.thresholds[k])
    ious = per_image.best_iou[:, k]
    order = np.argsort(ious, kind="stable")
    picks = ([("worst", r) for r in order[:count // 2]]
             + [("best", r) for r in order[::-1][:count - count // 2]])
    out_dir = files.as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = self.iterator.source
    row_fn = transforms.EvalRow(self.map_size, self.iterator.info.max_boxes, False)
    written = []
    for tag, r in picks:
      index = int(per_image.index[r])
      record = source[index]
      row = row_fn.map(record)
      maps, _, _ = self._predict[False](variables, jnp.asarray(row["image"][None]),
                                        jnp.asarray([int(row["label"])], jnp.int32))
      image = np.asarray(record["image"])
      heat = postprocess.resize_and_normalize_host(np.asarray(maps[0]), image.shape[:2],
                                                   self.upsample)
      box = viz.largest_contour_box(heat, threshold)
      picture = viz.show_cam_on_image(image, heat)
      picture = viz.draw_boxes(picture, np.round(record["boxes"]).astype(np.int64),
                               color=(0, 0, 255))
      picture = viz.draw_boxes(picture, box[None], color=(0, 255, 0))
      path = out_dir / f"{tag}_{index:06d}_iou{ious[r]:.2f}.png"
      files.save_png(path, picture)
      written.append(path)
    return written


def for_method(method: Any, config: ml_collections.ConfigDict, split: str,
               mesh: jax.sharding.Mesh | None = None, *, protocols: bool = False,
               progress: bool = False) -> LocalizationEvaluator:
  """The evaluator of a method plug-in (``wsol_jax.methods.base.Method``) under a config.

  ``eval.map_kind`` and ``eval.upsample`` override the method's default map and its official
  interpolation; with ``protocols`` the papers' protocols of ``eval.protocols`` run (default:
  the method's ``eval_protocols``).
  """
  ev = config.eval
  kind = str(ev.map_kind) or method.map_kinds[0]
  return LocalizationEvaluator(
      functools.partial(method.maps, kind=None if kind == method.map_kinds[0] else kind),
      method.predict, ev, config.data, split,
      num_classes=method.num_classes, mean=method.mean, std=method.std,
      upsample=str(ev.upsample) or method.upsample, maps_all_classes=method.maps_all_classes,
      protocols=protocols_lib.resolve_names(ev, method) if protocols else (),
      mesh=mesh, progress=progress)
