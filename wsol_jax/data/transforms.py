"""grain transforms from records to fixed-shape batch rows.

All classes live at module level (picklable for grain worker processes).
Images stay uint8; normalisation happens on device.

Train:  TrainAugment -> CountSkipped -> DropErrors -> TrainRow
Eval:   EvalRow (errors and padding rows become valid=False rows)

Skipped images: a record whose 'error' is set is dropped from training by
``DropErrors``; ``CountSkipped`` (which runs just before, in the same worker,
in record order) attaches to the next good row the number of error records
it saw since the previous good row, as '_skipped', and raises
``records.UnreadableDataError`` when a run of them reaches its limit. Batched, these sum to the
number of dropped records, across worker processes, and the iterator in the
main process (``pipeline.TrainIterator``) adds them up and logs them.
"""
from __future__ import annotations

import logging

import grain.python as grain
import numpy as np
from PIL import Image

from wsol_jax.data import geometry, records

log = logging.getLogger("wsol_jax.data")  # console and train.log

PADDING_ERROR = "<padding>"  # 'error' of the filler rows that complete the last eval batch


def _pil_resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """PIL bilinear resize (what torchvision's Resize does on PIL images)."""
  h, w = size_hw
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


class TrainAugment(grain.RandomMapTransform):
  """Resize (aspect not kept) -> random crop -> random horizontal flip.

  torchvision's Resize((rh, rw)) + RandomCrop((ch, cw)) + RandomHorizontalFlip()
  with grain's per-record rng (deterministic given the sampler seed). Boxes
  move with the image. Error records pass through untouched.
  """

  def __init__(self, resize_hw: tuple[int, int], crop_hw: tuple[int, int], flip: bool = True):
    if crop_hw[0] > resize_hw[0] or crop_hw[1] > resize_hw[1]:
      raise ValueError(f"crop {crop_hw} larger than resize {resize_hw}")
    self.resize_hw = tuple(int(v) for v in resize_hw)
    self.crop_hw = tuple(int(v) for v in crop_hw)
    self.flip = flip

  def random_map(self, record: records.Record, rng: np.random.Generator) -> records.Record:
    if record["error"]:
      return record
    image = record["image"]
    h, w = image.shape[:2]
    rh, rw = self.resize_hw
    ch, cw = self.crop_hw
    image = _pil_resize(image, (rh, rw))
    boxes = geometry.scale_boxes(record["boxes"], rw / w, rh / h)
    top = int(rng.integers(0, rh - ch + 1))
    left = int(rng.integers(0, rw - cw + 1))
    image = image[top:top + ch, left:left + cw]
    boxes = geometry.crop_boxes(boxes, left, top, cw, ch)
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
      boxes = geometry.flip_boxes(boxes, cw)
    out = dict(record)
    out.pop("mask", None)  # training does not use masks
    out["image"] = np.ascontiguousarray(image)
    out["boxes"] = boxes
    return out


class CountSkipped(grain.MapTransform):
  """Stateful: tags each good record with the number of error records just before it.

  Runs in the worker that owns the records (records reach it in order), so
  the tags of all workers sum to the number of dropped records. Error records
  at the very end of a finite stream, and those before a dropped remainder,
  are not reported.
  """

  def __init__(self, max_consecutive: int = 0, split: str = ""):
    self.max_consecutive = int(max_consecutive)
    self.split = split
    self._pending = 0
    self._examples: list[records.Record] = []

  def map(self, record: records.Record) -> records.Record:
    if record["error"]:
      self._pending += 1
      if len(self._examples) < 3:
        self._examples.append(record)
      if self.max_consecutive and self._pending >= self.max_consecutive:
        raise records.UnreadableDataError(
            f"training split {self.split!r}: {self._pending} images in a row cannot be read "
            f"(data.max_consecutive_unreadable={self.max_consecutive}), e.g. "
            + records.describe_errors(self._examples))
      return record
    if self._examples:
      self._examples = []
    record = dict(record)
    record["_skipped"] = np.int32(self._pending)
    self._pending = 0
    return record


class DropErrors(grain.FilterTransform):
  """Drops error records (unreadable images)."""

  def filter(self, record: records.Record) -> bool:
    return not record["error"]


class TrainRow(grain.MapTransform):
  """Selects the training fields: image uint8 (h,w,3), label int32 (+ padded boxes)."""

  def __init__(self, max_boxes: int = 0):
    self.max_boxes = int(max_boxes)

  def map(self, record: records.Record) -> dict[str, np.ndarray]:
    row = {
        "image": record["image"],
        "label": np.int32(record["label"]),
        "_skipped": np.int32(record.get("_skipped", 0)),
    }
    if self.max_boxes:
      row["boxes"] = _padded_boxes(record, record["boxes"], self.max_boxes)
    return row


def _padded_boxes(record: records.Record, boxes: np.ndarray, max_boxes: int) -> np.ndarray:
  padded, dropped = geometry.pad_boxes(boxes, max_boxes)
  if dropped:
    log.warning("%s has %d boxes, more than max_boxes=%d: the last %d are dropped; "
                "raise the data config's max_boxes", record["image_id"],
                len(boxes), max_boxes, dropped)
  return padded


class EvalRow(grain.MapTransform):
  """Resize straight to (H', W'), boxes and masks as wsolevaluation.

  Output row (fixed shapes):
    image uint8 (H', W', 3); label int32; boxes int32 (G, 4), -1 padded;
    mask uint8 (H', W') when ``has_masks`` (255 = ignore on invalid rows);
    orig_size int32 (2,) = (H, W); index int32; valid bool;
    '_error' bool (unreadable image, counted by the iterator).
  """

  def __init__(self, size_hw: tuple[int, int], max_boxes: int, has_masks: bool):
    self.size_hw = tuple(int(v) for v in size_hw)
    self.max_boxes = int(max_boxes)
    self.has_masks = bool(has_masks)

  def map(self, record: records.Record) -> dict[str, np.ndarray]:
    sh, sw = self.size_hw
    error = record["error"]
    if error:
      row = {
          "image": np.zeros((sh, sw, 3), np.uint8),
          "label": np.int32(record["label"]),
          "boxes": np.full((self.max_boxes, 4), -1, np.int32),
          "orig_size": np.zeros(2, np.int32),
          "index": np.int32(record["index"]),
          "valid": np.bool_(False),
          "_error": np.bool_(error != PADDING_ERROR),
      }
      if self.has_masks:
        row["mask"] = np.full((sh, sw), records.MASK_IGNORE, np.uint8)
      return row
    image = record["image"]
    h, w = image.shape[:2]
    boxes = geometry.resize_bbox(record["boxes"], (w, h), (sw, sh))
    row = {
        "image": _pil_resize(image, (sh, sw)),
        "label": np.int32(record["label"]),
        "boxes": _padded_boxes(record, boxes, self.max_boxes),
        "orig_size": np.array([h, w], np.int32),
        "index": np.int32(record["index"]),
        "valid": np.bool_(True),
        "_error": np.bool_(False),
    }
    if self.has_masks:
      row["mask"] = geometry.resize_mask_nearest(record["mask"], (sh, sw))
    return row
