"""PASCAL VOC 2012 sources: a VOCdevkit folder and TFDS ``voc/2012``, in AG-CAM's protocol.

Both sources read the same annotations and apply the same rule (``VocOptions``), so one
image gives the same record from either:

  VOCdevkit/VOC2012/          (``data.voc.root``; name='voc')
    ImageSets/Main/<split>.txt  image ids, one per line (first token; 'train', 'val', ...)
    Annotations/<id>.xml        <size><width>/<height>, one <object> per instance with
                                <name>, <difficult>, <truncated>, <bndbox> xmin ymin xmax ymax
    JPEGImages/<id>.jpg
  TFDS voc/2012 (name='voc_tfds', in ``data.data_dir``): splits 'train', 'validation' (= VOC
  val, the paper's evaluation set) and 'test' (no annotations in 2012); ``objects`` carries
  label, bbox (normalised by the XML size), is_difficult, is_truncated per instance.

AG-CAM's VOC dataset (``Datasets/PascalVOC.py``, only a compiled ``.pyc`` in the official
repository; read with ``dis``) is followed:

* Classes: the 20 VOC names in alphabetical order (the official tuple, = TFDS's ClassLabel).
* Single-class images only (``single_class=True``): an image is kept when exactly one class
  is marked present. The official lists (``ImageSets/Main/{train,val}_classes.txt``, not
  released) keep images with exactly one '1' among the 20 per-class flags; VOC's own flags
  are 1 for a class with a non-difficult instance, 0 for one with only difficult instances,
  -1 otherwise, so a class counts when it has a non-difficult instance
  (``difficult_labels=False``, our reading of the unreleased lists). Images with no counted
  class are dropped too. With ``single_class=False`` a multi-class image is labelled with
  the class of its first counted object (not the paper's protocol).
* Boxes: EVERY instance of the image's class, difficult and truncated included
  (``difficult_boxes=True``, ``truncated_boxes=True``: the official loop has no such check).
  Either can be set False; an image left with no box is then dropped (counted and logged).
* Coordinates as in the XML (1-based, inclusive, xmax up to W), not shifted: AG-CAM
  scales them with int(x / W · 224), which the eval pipeline's floor(x · 224 / W) equals.
  Boxes are validated against the XML size: a box outside [0, W] x [0, H] or with
  xmin > xmax fails naming the file, unless ``clip_boxes=True`` clips it (counted).
* An XML without a positive <size> fails (the box checks and TFDS need it); values that are
  not numbers, unknown class names, a missing <name>/<bndbox> fail with one line naming
  the file. The image is decoded at read time (an unreadable JPEG becomes an error record,
  counted and skipped like in every source); a decoded size different from the XML size is
  logged once and the boxes are rescaled with the decoded size, as the official code does.

Pixel ground truth for AG-CAM's metrics is the union of these boxes (as for ILSVRC in the
official ``localization.py``); VOC's segmentation masks are not used (``has_masks`` False).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import xml.etree.ElementTree as ElementTree
from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from wsol_jax.data import geometry, images, records, tfds_sources

log = logging.getLogger("wsol_jax.data")  # console and train.log

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
           "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
           "sofa", "train", "tvmonitor")
TFDS_NAME = "voc/2012"
_HINT = ("Download VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012/) and "
         "set data.voc.root to its VOCdevkit/VOC2012 folder, or use data.name='voc_tfds' "
         "(TFDS voc/2012).")


class VocAnnotationError(ValueError):
  """A malformed or inconsistent VOC annotation; the message names the file and the problem."""


class VocNotFoundError(FileNotFoundError):
  """The VOCdevkit folder, a split list or an annotation is missing."""


@dataclasses.dataclass(frozen=True)
class VocOptions:
  """Which images and boxes a VOC source delivers (module docstring; ``data.voc``)."""
  single_class: bool = True
  difficult_labels: bool = False
  difficult_boxes: bool = True
  truncated_boxes: bool = True
  clip_boxes: bool = False

  @classmethod
  def from_config(cls, cfg: Any) -> "VocOptions":
    return cls(**{f.name: bool(cfg[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class VocObject:
  label: int
  box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the XML's pixels
  difficult: bool
  truncated: bool


@dataclasses.dataclass
class Selection:
  """What ``select`` keeps of one image, or why not (``reason``)."""
  label: int = -1
  boxes: np.ndarray | None = None  # float32 (N, 4)
  reason: str = ""  # '' kept | 'multi_class' | 'no_class' | 'no_box'


def select(objects: Sequence[VocObject], options: VocOptions) -> Selection:
  """The label and boxes of one image under ``options`` (the module docstring's rule)."""
  counted = [o.label for o in objects if options.difficult_labels or not o.difficult]
  classes = sorted(set(counted))
  if not classes:
    return Selection(reason="no_class")
  if options.single_class and len(classes) > 1:
    return Selection(reason="multi_class")
  label = counted[0]
  boxes = [o.box for o in objects if o.label == label
           and (options.difficult_boxes or not o.difficult)
           and (options.truncated_boxes or not o.truncated)]
  if not boxes:
    return Selection(label=label, reason="no_box")
  return Selection(label=label, boxes=np.asarray(boxes, np.float32).reshape(-1, 4))


def _text(parent: ElementTree.Element, tag: str, path: str, where: str) -> str:
  node = parent.find(tag)
  if node is None or node.text is None or not node.text.strip():
    raise VocAnnotationError(f"{path}: {where} has no <{tag}>")
  return node.text.strip()


def _number(parent: ElementTree.Element, tag: str, path: str, where: str) -> float:
  text = _text(parent, tag, path, where)
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise VocAnnotationError(f"{path}: {where} <{tag}> is not a number: {text!r}")
  return value


def _flag(parent: ElementTree.Element, tag: str) -> bool:
  node = parent.find(tag)  # an absent <difficult>/<truncated> means 0
  return node is not None and (node.text or "").strip() == "1"


def parse_annotation(path: str, options: VocOptions = VocOptions()
                     ) -> tuple[tuple[int, int], list[VocObject], int]:
  """Reads one VOC XML.

  Returns:
    ((W, H) from <size>, objects in file order, number of boxes clipped to the image).

  Raises:
    VocNotFoundError: the file does not exist.
    VocAnnotationError: not XML, no positive size, an object without a known <name> or a
      numeric <bndbox>, xmin > xmax / ymin > ymax, or a box outside the image (unless
      ``options.clip_boxes``); the message names the file and the object.
  """
  try:
    root = ElementTree.parse(path).getroot()
  except FileNotFoundError:
    raise VocNotFoundError(f"missing annotation {path}. {_HINT}") from None
  except ElementTree.ParseError as e:
    raise VocAnnotationError(f"{path}: not valid XML: {e}") from None
  size = root.find("size")
  if size is None:
    raise VocAnnotationError(f"{path}: no <size> (width and height are needed to check boxes)")
  w, h = _number(size, "width", path, "<size>"), _number(size, "height", path, "<size>")
  if w <= 0 or h <= 0:
    raise VocAnnotationError(f"{path}: <size> {w:g}x{h:g} is not positive")
  objects, clipped = [], 0
  for k, obj in enumerate(root.findall("object")):
    where = f"object {k}"
    name = _text(obj, "name", path, where).lower()
    if name not in CLASSES:
      raise VocAnnotationError(f"{path}: {where} has unknown class {name!r} (VOC has "
                               f"{', '.join(CLASSES)})")
    where = f"object {k} ({name})"
    bndbox = obj.find("bndbox")
    if bndbox is None:
      raise VocAnnotationError(f"{path}: {where} has no <bndbox>")
    x0, y0, x1, y1 = (_number(bndbox, t, path, where) for t in ("xmin", "ymin", "xmax", "ymax"))
    box_text = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if x1 < x0 or y1 < y0:
      raise VocAnnotationError(f"{path}: {where} box {box_text} has xmin > xmax or ymin > ymax")
    box, status = geometry.fit_to_image((x0, y0, x1, y1), w, h, options.clip_boxes)
    if status == "leaves":
      raise VocAnnotationError(f"{path}: {where} box {box_text} leaves the {w:g}x{h:g} image "
                               "(set data.voc.clip_boxes=True to clip such boxes)")
    if status == "outside":
      raise VocAnnotationError(f"{path}: {where} box {box_text} lies outside the "
                               f"{w:g}x{h:g} image")
    clipped += status == "clipped"
    objects.append(VocObject(CLASSES.index(name), box, _flag(obj, "difficult"),
                             _flag(obj, "truncated")))
  return (int(w), int(h)), objects, clipped


@dataclasses.dataclass
class _Kept:
  """One image a source delivers: its position in the split, id, label, boxes, XML size."""
  position: int
  image_id: str
  label: int
  boxes: np.ndarray
  size: tuple[int, int] | None  # (W, H) of the annotation; None when unknown


class _VocBase:
  """Filtering, counting and record assembly shared by the two sources."""
  num_classes = len(CLASSES)
  class_names = list(CLASSES)
  has_masks = False

  def _select_all(self, items: Iterable[tuple[int, str, list[VocObject], Any]],
                  options: VocOptions, where: str) -> None:
    self.options = options
    self.excluded = {"multi_class": 0, "no_class": 0, "no_box": 0}
    self._kept: list[_Kept] = []
    total = 0
    for position, image_id, objects, size in items:
      total += 1
      s = select(objects, options)
      if s.reason:
        self.excluded[s.reason] += 1
      else:
        self._kept.append(_Kept(position, image_id, s.label, s.boxes, size))
    self.num_images = total
    dropped = {k: v for k, v in self.excluded.items() if v}
    log.info("%s: %d of %d images kept%s", where, len(self._kept), total,
             "".join(f", {v} {_REASONS[k]}" for k, v in dropped.items()))

  def __len__(self) -> int:
    return len(self._kept)

  @property
  def image_ids(self) -> list[str]:
    return [k.image_id for k in self._kept]

  def _record(self, index: int, image: np.ndarray, where: str) -> records.Record:
    kept = self._kept[index]
    h, w = image.shape[:2]
    boxes = kept.boxes
    if kept.size is not None and kept.size != (w, h):
      records.warn_once(log, "size", where, "%s: the annotation says %dx%d but the image is "
                        "%dx%d; boxes are rescaled with the decoded size", where, *kept.size, w, h)
    return records.make_record(image=image, label=kept.label, boxes=boxes,
                               image_id=kept.image_id, index=index)

  def _error(self, index: int, where: str, error: str) -> records.Record:
    kept = self._kept[index]
    records.warn_once(log, "unreadable", where, "unreadable image %s: %s", where, error)
    return records.error_record(index=index, image_id=kept.image_id, label=kept.label,
                                error=error)


_REASONS = {"multi_class": "with several classes excluded (data.voc.single_class)",
            "no_class": "without a non-difficult object excluded (data.voc.difficult_labels)",
            "no_box": "left without a box excluded (data.voc.difficult_boxes / truncated_boxes)"}


class VocFolderSource(_VocBase):
  """Random-access records of one split of a VOCdevkit folder (``VOC2012`` level)."""

  def __init__(self, root: str, split: str, options: VocOptions = VocOptions()):
    """Reads ``<root>/ImageSets/Main/<split>.txt`` and every listed annotation.

    Raises:
      VocNotFoundError: ``root``, the split list or an annotation is missing.
      VocAnnotationError: a malformed annotation (see ``parse_annotation``) or split list.
    """
    if not root or not os.path.isdir(root):
      raise VocNotFoundError(f"VOC folder {root!r} not found (data.voc.root: the VOCdevkit/"
                             f"VOC2012 folder holding Annotations/, JPEGImages/, ImageSets/). "
                             f"{_HINT}")
    self.root, self.split = root, split
    list_path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(list_path):
      have = sorted(f[:-4] for f in os.listdir(os.path.dirname(list_path))
                    if f.endswith(".txt") and "_" not in f) if os.path.isdir(
                        os.path.dirname(list_path)) else []
      raise VocNotFoundError(f"no split list {list_path} (split {split!r}; this folder has "
                             f"{have or 'none'})")
    with open(list_path, encoding="utf-8") as f:
      ids = [line.split()[0] for line in f if line.strip()]
    seen: set[str] = set()
    for image_id in ids:
      if image_id in seen:
        raise VocAnnotationError(f"{list_path}: image id {image_id!r} is listed twice")
      seen.add(image_id)
    clipped = 0

    def items():
      nonlocal clipped
      for position, image_id in enumerate(ids):
        size, objects, n = parse_annotation(
            os.path.join(root, "Annotations", f"{image_id}.xml"), options)
        clipped += n
        yield position, image_id, objects, size

    self._select_all(items(), options, f"VOC {list_path}")
    if clipped:
      log.warning("%s: %d box(es) of split %r left their image and were clipped "
                  "(data.voc.clip_boxes)", root, clipped, split)

  def __repr__(self) -> str:
    return f"VocFolderSource({self.root!r}, split={self.split!r}, n={len(self)})"

  def __getitem__(self, index: int) -> records.Record:
    index = int(index)
    path = os.path.join(self.root, "JPEGImages", f"{self._kept[index].image_id}.jpg")
    try:
      image = images.read_image_file(path)
    except images.ImageDecodeError as e:
      return self._error(index, path, str(e))
    return self._record(index, image, path)


class VocTfdsSource(_VocBase, tfds_sources.TfdsSource):
  """Random-access records of one split of TFDS ``voc/2012`` (prepared as array_record).

  The split is scanned once (images not decoded) to apply ``VocOptions``; images are
  decoded at read time with PIL like the folder source. Normalised boxes become pixels with
  the decoded size, rounded to whole pixels (VOC's coordinates are integers) and clipped to
  [0, W] x [0, H].
  """
  _DECODERS = {"image": tfds.decode.SkipDecoding()}

  def __init__(self, split: str, data_dir: str | None = None, options: VocOptions = VocOptions(),
               *, download: bool = False, name: str = TFDS_NAME):
    """Opens ``name`` split ``split`` ('train', 'validation' = VOC val, 'train[:90%]', ...).

    Raises:
      tfds_sources.DatasetNotFoundError: not prepared (the message says how) or not VOC.
    """
    self.name, self.split = name, split
    self.data_dir = data_dir or None
    self.download = download
    self._missing_hint = None
    self._builder_module = None
    self._ds = None
    ds = self._open()
    features = ds.dataset_info.features
    if "objects" not in features or "is_difficult" not in features["objects"].feature:
      raise tfds_sources.DatasetNotFoundError(f"TFDS dataset {name!r} is not PASCAL VOC (no "
                                              "objects/is_difficult feature)")

    def items():
      step = 256
      for start in range(0, len(ds), step):
        stop = min(start + step, len(ds))
        for position, ex in zip(range(start, stop), ds.__getitems__(list(range(start, stop)))):
          yield position, self._example_id(ex, position), self._objects(ex), None

    self._select_all(items(), options, f"TFDS {name} {split!r}")

  def __repr__(self) -> str:
    return f"VocTfdsSource({self.name!r}, split={self.split!r}, n={len(self)})"

  def _example_id(self, example: dict[str, Any], position: int) -> str:
    name = example.get("image/filename", b"")
    name = name.decode("utf-8", "replace") if isinstance(name, (bytes, np.bytes_)) else str(name)
    return name[:-4] if name.endswith(".jpg") else name or f"{self.name}:{self.split}[{position}]"

  @staticmethod
  def _objects(example: dict[str, Any]) -> list[VocObject]:
    o = example["objects"]
    bbox = np.asarray(o["bbox"], np.float64).reshape(-1, 4)  # normalised ymin, xmin, ymax, xmax
    return [VocObject(int(label), tuple(b[[1, 0, 3, 2]]), bool(d), bool(t))
            for label, b, d, t in zip(o["label"], bbox, o["is_difficult"], o["is_truncated"])]

  def __getitem__(self, index: int) -> records.Record:
    index = int(index)
    kept = self._kept[index]
    where = f"{self.name}:{self.split}[{kept.position}] ({kept.image_id})"
    try:
      image = images.decode_image_bytes(self._open()[kept.position]["image"], where)
    except Exception as e:  # pylint: disable=broad-except  # TFDS read or decode failure
      return self._error(index, where, f"{type(e).__name__}: {e}")
    h, w = image.shape[:2]
    boxes = np.rint(kept.boxes.astype(np.float64) * [w, h, w, h])
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    return records.make_record(image=image, label=kept.label, boxes=boxes,
                               image_id=kept.image_id, index=index)
