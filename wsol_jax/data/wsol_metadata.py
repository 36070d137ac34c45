"""Source for the wsolevaluation metadata layout (CUB, CUBV2, ILSVRC, OpenImages).

Layout (github.com/clovaai/wsolevaluation, ``metadata/<dataset>/<split>/``):

  image_ids.txt      <image_id>                       one per line
  class_labels.txt   <image_id>,<label>
  image_sizes.txt    <image_id>,<W>,<H>
  localization.txt   <image_id>,<x0>,<y0>,<x1>,<y1>   boxes, one line per box
               or    <image_id>,<mask_png>,<ignore_png>   masks (OpenImages): one
                     line per instance; only the first line of an image names
                     its ignore mask, later ones leave it empty.

Images are ``<image_root>/<image_id>`` (wsolevaluation's ``dataset/<name>``; for
CUB the ``val`` split is CUBV2, whose images prepare_cub.sh puts in the same
root). Mask paths are relative to ``mask_root`` (``dataset/OpenImages``).

Masks are merged at the original size exactly like wsolevaluation's
``get_mask`` does after its 224 resize (nearest resizing commutes with the
pixelwise operations): object = union of instance masks > 0, ignore = ignore
mask > 0 and not object; record mask 1 / 255 / 0. A mask file whose size
differs from its image is first resized to the image (nearest), a deviation
from the reference that is logged.

Box values are parsed as numbers (wsolevaluation uses ``int``); a malformed
line raises ``MetadataError`` naming the file and line number.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import numpy as np

from wsol_jax.data import geometry, images, records

log = logging.getLogger("wsol_jax.data")  # console and train.log

NUM_CLASSES = {"CUB": 200, "ILSVRC": 1000, "OpenImages": 100}
_HINT = (
    "Get the metadata with `git clone https://github.com/clovaai/wsolevaluation` (folder "
    "metadata/<CUB|ILSVRC|OpenImages>) and the images with its download scripts "
    "(dataset/prepare_cub.sh for CUB and CUBV2, dataset/prepare_evaluation_data.sh for the "
    "ImageNetV2 / OpenImages evaluation data; ILSVRC train/val from image-net.org), see its "
    "README.")


class MetadataError(ValueError):
  """A malformed or inconsistent metadata file; the message names the file and line."""


class MetadataNotFoundError(FileNotFoundError):
  """Metadata or image folders are missing; the message says how to get them."""


@dataclasses.dataclass
class SplitMetadata:
  """Parsed metadata of one split (all keyed by image id)."""
  image_ids: list[str]
  labels: dict[str, int]
  sizes: dict[str, tuple[int, int]]  # (W, H)
  boxes: dict[str, list[tuple[float, float, float, float]]]
  mask_paths: dict[str, list[str]]
  ignore_paths: dict[str, str]
  label_lines: dict[str, int] = dataclasses.field(default_factory=dict)  # class_labels.txt line
  clipped_boxes: int = 0  # boxes clipped to their image (clip_boxes=True)

  @property
  def has_masks(self) -> bool:
    return bool(self.mask_paths)


def _lines(path: str) -> list[tuple[int, str]]:
  """(1-based line number, stripped line) for every non-blank line."""
  if not os.path.isfile(path):
    raise MetadataNotFoundError(f"missing metadata file {path}. {_HINT}")
  with open(path, encoding="utf-8") as f:
    return [(i + 1, line.strip("\r\n")) for i, line in enumerate(f) if line.strip()]


def _split_fields(path: str, lineno: int, line: str, n: int, form: str) -> list[str]:
  fields = line.split(",")
  if len(fields) != n or not fields[0]:
    raise MetadataError(f"{path}:{lineno}: expected '{form}', got {line!r}")
  return fields


def _number(path: str, lineno: int, line: str, text: str, kind=float):
  try:
    return kind(text)
  except ValueError:
    raise MetadataError(f"{path}:{lineno}: {text!r} is not a number in {line!r}") from None


def read_split_metadata(split_dir: str, clip_boxes: bool = False) -> SplitMetadata:
  """Parses and validates the four metadata files of one split folder.

  Every line is checked: ids unique, labels non-negative, sizes positive, boxes with
  0 ≤ x0 ≤ x1, 0 ≤ y0 ≤ y1 and inside their image (x1 ≤ W, y1 ≤ H). ``clip_boxes`` clips
  boxes that leave the image instead of failing; they are counted (``clipped_boxes``).

  Raises:
    MetadataNotFoundError: a file is missing.
    MetadataError: a malformed or invalid line (file:line and the image id in the message),
      or an image id without a label or size.
  """
  ids_path = os.path.join(split_dir, "image_ids.txt")
  labels_path = os.path.join(split_dir, "class_labels.txt")
  sizes_path = os.path.join(split_dir, "image_sizes.txt")
  loc_path = os.path.join(split_dir, "localization.txt")

  image_ids, first_line = [], {}
  for lineno, image_id in _lines(ids_path):
    if image_id in first_line:
      raise MetadataError(f"{ids_path}:{lineno}: duplicate image id {image_id!r} (first at line "
                          f"{first_line[image_id]})")
    first_line[image_id] = lineno
    image_ids.append(image_id)
  labels: dict[str, int] = {}
  label_lines: dict[str, int] = {}
  for lineno, line in _lines(labels_path):
    image_id, label = _split_fields(labels_path, lineno, line, 2, "image_id,label")
    labels[image_id] = _number(labels_path, lineno, line, label, int)
    label_lines[image_id] = lineno
    if labels[image_id] < 0:
      raise MetadataError(f"{labels_path}:{lineno}: negative label {labels[image_id]} of image "
                          f"{image_id!r}")
  sizes: dict[str, tuple[int, int]] = {}
  for lineno, line in _lines(sizes_path):
    image_id, w, h = _split_fields(sizes_path, lineno, line, 3, "image_id,W,H")
    sizes[image_id] = (_number(sizes_path, lineno, line, w, int),
                       _number(sizes_path, lineno, line, h, int))
    if min(sizes[image_id]) <= 0:
      raise MetadataError(f"{sizes_path}:{lineno}: size {sizes[image_id][0]}x{sizes[image_id][1]} "
                          f"of image {image_id!r} is not positive")
  clipped = 0

  boxes: dict[str, list[tuple[float, float, float, float]]] = {}
  mask_paths: dict[str, list[str]] = {}
  ignore_paths: dict[str, str] = {}
  loc_lines = _lines(loc_path) if os.path.isfile(loc_path) else []
  mask_mode = bool(loc_lines) and len(loc_lines[0][1].split(",")) == 3
  for lineno, line in loc_lines:
    if mask_mode:
      image_id, mask, ignore = _split_fields(loc_path, lineno, line, 3,
                                             "image_id,mask_png,ignore_png")
      if image_id in mask_paths:
        mask_paths[image_id].append(mask)
        if ignore:
          raise MetadataError(f"{loc_path}:{lineno}: only the first line of {image_id!r} may name "
                              f"an ignore mask, got {line!r}")
      else:
        mask_paths[image_id] = [mask]
        ignore_paths[image_id] = ignore
    else:
      fields = _split_fields(loc_path, lineno, line, 5, "image_id,x0,y0,x1,y1")
      x0, y0, x1, y1 = (_number(loc_path, lineno, line, v) for v in fields[1:])
      if x1 < x0 or y1 < y0:
        raise MetadataError(f"{loc_path}:{lineno}: invalid box of image {fields[0]!r} (need "
                            f"x0 <= x1, y0 <= y1): {line!r}")
      w, h = sizes.get(fields[0], (float("inf"), float("inf")))
      box, status = geometry.fit_to_image((x0, y0, x1, y1), w, h, clip_boxes)
      if status == "leaves":
        raise MetadataError(
            f"{loc_path}:{lineno}: box of image {fields[0]!r} leaves the image ({w}x{h} in "
            f"image_sizes.txt): {line!r} (set data.metadata.clip_boxes=True to clip such "
            "boxes)")
      if status == "outside":
        raise MetadataError(f"{loc_path}:{lineno}: box of image {fields[0]!r} lies outside "
                            f"the image ({w}x{h}): {line!r}")
      clipped += status == "clipped"
      boxes.setdefault(fields[0], []).append(box)

  for image_id in image_ids:
    if image_id not in labels:
      raise MetadataError(f"{labels_path}: no label for image {image_id!r} (listed in {ids_path})")
    if image_id not in sizes:
      raise MetadataError(f"{sizes_path}: no size for image {image_id!r} (listed in {ids_path})")
  return SplitMetadata(image_ids, labels, sizes, boxes, mask_paths, ignore_paths, label_lines,
                       clipped)


def _class_names(meta: SplitMetadata, num_classes: int) -> list[str]:
  """Class names from the ids' parent folders when they are one folder per class
  (CUB '001.Black_footed_Albatross/x.jpg', ILSVRC train 'train/n01440764/x.JPEG'),
  else 'class_<k>'."""
  folder: dict[int, str] = {}
  for image_id in meta.image_ids:
    parts = image_id.replace("\\", "/").split("/")
    label = meta.labels[image_id]
    name = parts[-2] if len(parts) >= 2 else ""
    if not name or folder.setdefault(label, name) != name:
      break
  else:
    if len(set(folder.values())) == len(folder) == num_classes:
      return [folder[k] for k in range(num_classes)]
  return [f"class_{k}" for k in range(num_classes)]


class WsolMetadataSource:
  """Random-access source of records for one split of a wsolevaluation dataset.

  Attributes:
    num_classes, class_names, has_masks: as for ``TfdsSource``.
    image_ids: ids in source order.
  """

  def __init__(self, metadata_dir: str, split: str, image_root: str | Mapping[str, str], *,
               mask_root: str | None = None, dataset: str | None = None,
               num_classes: int | None = None, use_masks: bool = True,
               clip_boxes: bool = False, meta: SplitMetadata | None = None):
    """Reads ``<metadata_dir>/<split>/*.txt``.

    Args:
      metadata_dir: e.g. 'wsolevaluation/metadata/CUB'.
      split: 'train', 'val' (CUBV2 / ImageNetV2 / OpenImages val) or 'test'.
      image_root: image folder (e.g. 'dataset/CUB'), or a mapping split -> folder.
      mask_root: folder the mask paths are relative to (e.g. 'dataset/OpenImages');
        default: ``image_root``.
      dataset: 'CUB', 'ILSVRC' or 'OpenImages' (default: the metadata folder's
        name), used for the class count.
      num_classes: overrides the class count (default: by dataset, else max label + 1).
      use_masks: deliver OpenImages masks as the record 'mask'.
      clip_boxes: clip boxes that leave their image (counted, logged) instead of failing.
      meta: the split's metadata, already parsed (``derive``: also the class-folder
        layout, whose ``metadata_dir`` is then its image root); the files are not read.
    """
    split_dir = os.path.join(metadata_dir, split)
    if meta is None and not os.path.isdir(split_dir):
      raise MetadataNotFoundError(f"wsolevaluation metadata not found: {split_dir} is not a "
                                  f"folder. {_HINT}")
    # A mapping split -> folder (dict or ConfigDict) or one folder for all splits.
    root = image_root if isinstance(image_root, (str, os.PathLike)) else image_root[split]
    root = os.fspath(root) if root else root
    if not root or not os.path.isdir(root):
      raise MetadataNotFoundError(f"image folder {root!r} for {split_dir} not found. {_HINT}")
    self.metadata_dir = metadata_dir
    self.split = split
    self.image_root = root
    self.mask_root = mask_root or root
    self._meta = meta if meta is not None else read_split_metadata(split_dir, clip_boxes)
    if self._meta.clipped_boxes:
      log.warning("%s/localization.txt: %d box(es) left their image and were clipped "
                  "(data.metadata.clip_boxes)", split_dir, self._meta.clipped_boxes)
    self.image_ids = self._meta.image_ids
    dataset = dataset or os.path.basename(os.path.normpath(metadata_dir))
    labels = [self._meta.labels[i] for i in self.image_ids]
    self.num_classes = int(num_classes or NUM_CLASSES.get(dataset, 0)
                           or (max(labels) + 1 if labels else 0))
    if labels and max(labels) >= self.num_classes:
      image_id = max(self.image_ids, key=lambda i: self._meta.labels[i])
      raise MetadataError(f"{split_dir}/class_labels.txt:{self._meta.label_lines[image_id]}: "
                          f"label {max(labels)} of image {image_id!r} >= num_classes "
                          f"{self.num_classes}")
    self.class_names = _class_names(self._meta, self.num_classes)
    self.has_masks = bool(use_masks) and self._meta.has_masks
    if not self._meta.has_masks:
      missing = sum(1 for i in self.image_ids if i not in self._meta.boxes)
      if missing:
        log.warning("%s: %d of %d images have no box in localization.txt", split_dir,
                    missing, len(self.image_ids))

  def __len__(self) -> int:
    return len(self.image_ids)

  def __repr__(self) -> str:
    return f"WsolMetadataSource({self.metadata_dir!r}, split={self.split!r}, n={len(self)})"

  def __getitem__(self, index: int) -> records.Record:
    index = int(index)
    image_id = self.image_ids[index]
    label = self._meta.labels[image_id]
    try:
      image = images.read_image_file(os.path.join(self.image_root, image_id))
      mask = self._mask(image_id, image.shape[:2]) if self.has_masks else None
    except images.ImageDecodeError as e:
      records.warn_once(log, "unreadable", os.path.join(self.image_root, image_id),
                        "unreadable image %s: %s", image_id, e)
      return records.error_record(index=index, image_id=image_id, label=label, error=str(e),
                                  has_mask=self.has_masks)
    h, w = image.shape[:2]
    if self._meta.sizes[image_id] != (w, h):
      records.warn_once(log, "size", os.path.join(self.image_root, image_id),
                        "%s: image_sizes.txt says %s but the image is "
                        "%dx%d; boxes are rescaled with the decoded size", image_id,
                        self._meta.sizes[image_id], w, h)
    boxes = np.asarray(self._meta.boxes.get(image_id, []), np.float32).reshape(-1, 4)
    return records.make_record(image=image, label=label, boxes=boxes, image_id=image_id,
                               index=index, mask=mask)

  def _mask(self, image_id: str, size_hw: tuple[int, int]) -> np.ndarray:
    obj = np.zeros(size_hw, bool)
    for path in self._meta.mask_paths.get(image_id, []):
      obj |= self._read_mask(os.path.join(self.mask_root, path), size_hw) > 0
    out = obj.astype(np.uint8) * records.MASK_OBJECT
    ignore_path = self._meta.ignore_paths.get(image_id, "")
    if ignore_path:
      ignore = self._read_mask(os.path.join(self.mask_root, ignore_path), size_hw) > 0
      out[ignore & ~obj] = records.MASK_IGNORE
    return out

  @staticmethod
  def _read_mask(path: str, size_hw: tuple[int, int]) -> np.ndarray:
    mask = images.read_mask_file(path)
    if mask.shape != tuple(size_hw):
      log.warning("mask %s is %s, image is %s: resized to the image (nearest)", path,
                  mask.shape, size_hw)
      mask = geometry.resize_mask_nearest(mask, size_hw)
    return mask

  def metadata(self) -> dict[str, Any]:
    """Parsed metadata (ids, labels, sizes, boxes, mask paths) for inspection."""
    return dataclasses.asdict(self._meta)
