"""TFDS ArrayRecord sources: CUB-200-2011, Stanford Dogs and ``wsol_synthetic``.

``TfdsSource`` wraps ``tfds.data_source`` (random access, no TensorFlow
needed to READ array_record data) and converts each TFDS example to a record
(see ``records``):

* ``bbox`` (CUB, synthetic: one box) or ``objects/bbox`` (Dogs: a list of
  (4,) arrays on real data, an (N, 4) array on mock data), normalised
  [ymin, xmin, ymax, xmax] -> pixel [x0, y0, x1, y1] on the decoded image
  size, pairs sorted, rounded to whole pixels and clipped to W-1/H-1.
* ``segmentation_mask`` (CUB's soft 0..255 masks, synthetic 0/255) ->
  1 where value > ``mask_threshold`` (default 127: the majority of CUB's
  annotators), 0 elsewhere; resized (nearest) to the image if sizes differ
  (TFDS mock data).
* ``image/filename`` -> image_id: CUB keeps the last two path parts
  (``<class_dir>/<file>.jpg``, the wsolevaluation id); others keep it as is.

Images are decoded by TFDS (cv2 when importable, else PIL); grayscale is
replicated and alpha dropped. A record that fails to read or decode becomes
an error record (counted and skipped by the pipeline, never fatal).

The TFDS source is opened lazily and dropped on pickling, so a ``TfdsSource``
can be sent to grain worker processes.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from wsol_jax.data import geometry, images, records

log = logging.getLogger("wsol_jax.data")  # console and train.log

# TFDS names of the supported datasets, and how to get them.
CUB = "caltech_birds2011"
STANFORD_DOGS = "stanford_dogs"

_PREPARE_HINT = (
    "Prepare it once on a machine with network access, TensorFlow and importlib_resources "
    "(`pip install tensorflow importlib_resources`; TFDS 4.9.10 needs the latter to prepare "
    "but does not install it):\n"
    "  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
    "or set the data config's `download=True` (same requirements). "
    "Reading the prepared data afterwards needs no TensorFlow.")


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not prepared where it was looked for; the message says how to get it."""


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


class TfdsSource:
  """Random-access source of records from a TFDS dataset prepared as array_record.

  Attributes:
    num_classes: size of the ``label`` ClassLabel.
    class_names: its names.
    has_masks: whether records carry a 'mask'.
  """
  _DECODERS: dict[str, Any] | None = None  # tfds.data_source ``decoders`` (subclasses)

  def __init__(self, name: str, split: str, data_dir: str | None = None, *, download: bool = False,
               use_masks: bool = True, mask_threshold: int = 127,
               missing_hint: str | None = None, builder_module: str | None = None):
    """Opens ``name`` (e.g. 'caltech_birds2011', 'wsol_synthetic/k6_...') split ``split``.

    Args:
      name: TFDS name, optionally with config/version.
      split: split, slicing allowed ('train[:10%]').
      data_dir: TFDS data directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
      download: prepare the dataset if it is missing (needs network and TensorFlow).
      use_masks: deliver 'segmentation_mask' as the record 'mask' when present.
      mask_threshold: mask value above which a pixel is object.
      missing_hint: what to tell the user when the dataset is missing
        (default: the ``tfds build`` command).
      builder_module: module to import first so TFDS knows the builder class
        (e.g. 'wsol_jax.data.synthetic'); also imported in worker processes.

    Raises:
      DatasetNotFoundError: the dataset is not prepared and ``download`` is False,
        or preparing it failed.
    """
    self.name = name
    self.split = split
    self.data_dir = data_dir or None
    self.download = download
    self.mask_threshold = int(mask_threshold)
    self._missing_hint = missing_hint
    self._builder_module = builder_module
    self._ds = None
    ds = self._open()
    features = ds.dataset_info.features
    self.class_names = list(features["label"].names)
    self.num_classes = int(features["label"].num_classes)
    self.has_masks = bool(use_masks) and "segmentation_mask" in features
    self._is_cub = name.split("/")[0].split(":")[0] == CUB
    self._len = len(ds)

  def _open(self):
    if self._ds is None:
      self._ds = self._open_tfds()
    return self._ds

  def _open_tfds(self):
    if self._builder_module:
      importlib.import_module(self._builder_module)
    data_dir = self.data_dir or default_data_dir()
    hint = (self._missing_hint or _PREPARE_HINT).format(name=self.name.split("/")[0],
                                                        data_dir=data_dir)
    kwargs: dict[str, Any] = dict(split=self.split, data_dir=self.data_dir)
    if self._DECODERS:
      kwargs["decoders"] = self._DECODERS
    if self.download:
      kwargs["builder_kwargs"] = {"file_format": "array_record"}
    try:
      return tfds.data_source(self.name, download=self.download, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DatasetNotFoundError(f"TFDS has no dataset named {self.name!r}: {e}") from e
    except Exception as e:  # pylint: disable=broad-except
      first_line = str(e).splitlines()[0] if str(e) else ""
      if self.download:  # network errors, missing TensorFlow while preparing, ...
        raise DatasetNotFoundError(f"could not download and prepare {self.name!r} into "
                                   f"{data_dir}: {type(e).__name__}: {first_line}\n{hint}") from e
      # Unprepared data surfaces as "TFRECORD is not supported" (NotImplementedError) or,
      # for an unregistered builder config, "BuilderConfig ... not found" (ValueError).
      not_prepared = isinstance(e, (NotImplementedError, FileNotFoundError, AssertionError)) or (
          isinstance(e, ValueError) and "BuilderConfig" in str(e) and "not found" in str(e))
      if not not_prepared:
        raise
      raise DatasetNotFoundError(
          f"TFDS dataset {self.name!r} (split {self.split!r}) is not prepared in array_record "
          f"format under {data_dir}.\n{hint}\n(TFDS said: {type(e).__name__}: {first_line})"
      ) from e

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_ds"] = None  # reopened lazily in the worker process
    return state

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, n={self._len})"

  def __getitem__(self, index: int) -> records.Record:
    index = int(index)
    try:
      example = self._open()[index]
    except Exception as e:  # corrupt image bytes fail inside TFDS decoding
      image_id = f"{self.name}:{self.split}[{index}]"
      records.warn_once(log, "unreadable", f"{self.data_dir}/{image_id}",
                        "unreadable record %s: %s: %s", image_id,
                        type(e).__name__, e)
      return records.error_record(index=index, image_id=image_id, has_mask=self.has_masks,
                                  error=f"{type(e).__name__}: {e}")
    image_id = self._image_id(example, index)
    try:
      return self._to_record(example, index, image_id)
    except Exception as e:
      records.warn_once(log, "unusable", f"{self.data_dir}/{image_id}",
                        "unusable record %s: %s: %s", image_id,
                        type(e).__name__, e)
      return records.error_record(index=index, image_id=image_id, has_mask=self.has_masks,
                                  label=int(example.get("label", -1)),
                                  error=f"{type(e).__name__}: {e}")

  def _image_id(self, example: dict[str, Any], index: int) -> str:
    name = example.get("image/filename", b"")
    if isinstance(name, (bytes, np.bytes_)):
      name = name.decode("utf-8", "replace")
    name = str(name)
    if not name:
      return f"{self.name}:{self.split}[{index}]"
    if self._is_cub:  # 'CUB_200_2011/images/<class_dir>/<file>' -> wsolevaluation id
      name = "/".join(name.replace("\\", "/").split("/")[-2:])
    return name

  def _to_record(self, example: dict[str, Any], index: int, image_id: str) -> records.Record:
    image = images.to_rgb(example["image"])
    h, w = image.shape[:2]
    if "bbox" in example:
      bbox = example["bbox"]
    elif "objects" in example and "bbox" in example["objects"]:
      bbox = example["objects"]["bbox"]
    else:
      bbox = np.zeros((0, 4), np.float32)
    boxes = records.boxes_from_normalized_yxyx(bbox, h, w)
    mask = None
    if self.has_masks:
      seg = np.asarray(example["segmentation_mask"])
      seg = seg[..., 0] if seg.ndim == 3 else seg
      mask = (seg > self.mask_threshold).astype(np.uint8)
      mask = geometry.resize_mask_nearest(mask, (h, w))
    return records.make_record(image=image, label=int(example["label"]), boxes=boxes,
                               image_id=image_id, index=index, mask=mask)
