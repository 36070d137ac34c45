"""What a dataset determines, derived in one place: classes, boxes per image, masks, sizes.

A ``wsol_metadata`` config with ``data.metadata.dataset=''`` (no preset) reads one of two
layouts and derives its facts from the data (``data_facts``):

  wsolevaluation layout   ``metadata.metadata_dir`` holds train/ val/ test/ with
                          image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt
                          (``wsol_metadata``); images under ``metadata.image_root``.
  class folders           ``metadata.metadata_dir=''``: ``metadata.image_root`` holds one
                          sub-folder per class plus boxes.csv (``class_folders``).

  num_classes   max label + 1 over the splits (labels must be exactly 0..K-1), unless
                ``metadata.num_classes`` is set.
  max_boxes     the most boxes any image has (``data.max_boxes=0``), so no box is dropped.
  masks         OpenImages-style mask lines in localization.txt, or a ``mask/`` folder under
                ``metadata.mask_root`` (default: the image root) holding
                ``mask/<image id without extension>.png`` (pixel > 0 = object) for every
                image of a split: that split's evaluation then has masks (PxAP). A mask folder
                that misses images of a split is not used for it, and the log says so.

``resolve_config(config)`` fills the "0 = from the data" keys of a run config before the
method is built, and returns the lines that say what it chose (the trainer logs them):
``model.num_classes=0``, ``data.image_size=0`` (median image side rounded to a multiple of
32 in [128, 224]), ``data.resize_size=0`` (image_size * 8/7, like 256 for 224) and
``training.total_steps=-1`` (``AUTO_EPOCHS`` epochs, at least ``AUTO_MIN_STEPS`` steps). A ``model.num_classes`` that disagrees with the data is a
``ConfigError`` naming both values and keys.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
from typing import Any

import numpy as np

from wsol_jax import config_lib
from wsol_jax.data import class_folders
from wsol_jax.data import config as data_config
from wsol_jax.data import wsol_metadata

log = logging.getLogger("wsol_jax.data")

AUTO_EPOCHS = 30         # training length from the data: this many epochs ...
AUTO_MIN_STEPS = 500     # ... but at least this many steps (small datasets)
AUTO_SIZE_RANGE = (128, 224)
SIZE_MULTIPLE = 32       # a multiple of every shipped model's patch / output stride


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What the data determines (``data_facts``)."""
  layout: str                   # 'wsolevaluation' | 'class folders'
  root: str                     # the metadata folder, or the image root of class folders
  num_classes: int
  class_names: tuple[str, ...]
  max_boxes: int
  masks: dict[str, str]         # split -> where its masks come from (splits with masks only)
  num_images: dict[str, int]    # split -> images
  median_side: int              # median of (W + H) / 2 over the training images

  def describe(self) -> str:
    by_source: dict[str, list[str]] = {}
    for split, where in self.masks.items():
      by_source.setdefault(where, []).append(split)
    masks = "; ".join(f"{'/'.join(s)} from {w}" for w, s in by_source.items()) or "none"
    images = ", ".join(f"{s} {n}" for s, n in self.num_images.items())
    return (f"data ({self.layout}, {self.root}): {self.num_classes} classes, up to "
            f"{self.max_boxes} box(es) per image, images {images}, median side "
            f"{self.median_side} px, masks: {masks}")


def is_derived(cfg_data: Any) -> bool:
  """Whether the data config's facts come from the data (``wsol_metadata``, no preset)."""
  return cfg_data.name == "wsol_metadata" and not cfg_data.metadata.dataset


def _key(cfg_data: Any) -> tuple:
  m = cfg_data.metadata
  splits = tuple(data_config.resolve_split(cfg_data, r) for r in ("train", "val", "test"))
  return (str(m.metadata_dir), str(m.image_root), str(m.mask_root), str(m.boxes_file),
          tuple(float(f) for f in m.split_fractions), int(m.split_seed), bool(m.clip_boxes),
          int(m.num_classes), bool(cfg_data.use_masks), splits)


def split_metadata(cfg_data: Any, split: str) -> wsol_metadata.SplitMetadata:
  """The parsed metadata of ``split`` (masks attached), read once per process."""
  metas, _ = _load(_key(cfg_data))
  if split not in metas:
    facts = _load(_key(cfg_data))[1]
    raise wsol_metadata.MetadataNotFoundError(
        f"{facts.root} has no split {split!r} (it has {', '.join(metas)})")
  return metas[split]


def data_facts(cfg_data: Any) -> DataFacts:
  """The ``DataFacts`` of a derived data config (``is_derived``)."""
  if not is_derived(cfg_data):
    raise ValueError(f"data facts are derived for data.name='wsol_metadata' with "
                     f"data.metadata.dataset='', not {cfg_data.name!r}/"
                     f"{cfg_data.metadata.dataset!r}")
  return _load(_key(cfg_data))[1]


@functools.lru_cache(maxsize=4)
def _load(key: tuple) -> tuple[dict[str, wsol_metadata.SplitMetadata], DataFacts]:
  (metadata_dir, image_root, mask_root, boxes_file, fractions, seed, clip, num_classes,
   use_masks, splits) = key
  if metadata_dir:
    layout, root = "wsolevaluation", metadata_dir
    if not os.path.isdir(os.path.join(metadata_dir, splits[0])):
      raise wsol_metadata.MetadataNotFoundError(
          f"data.metadata.metadata_dir {metadata_dir!r} has no {splits[0]!r} folder: expected "
          "train/ val/ test/ each holding image_ids.txt, class_labels.txt, image_sizes.txt, "
          "localization.txt (or set metadata_dir='' for class sub-folders plus boxes.csv)")
    metas = {s: wsol_metadata.read_split_metadata(os.path.join(metadata_dir, s), clip)
             for s in splits if s and os.path.isdir(os.path.join(metadata_dir, s))}
  else:
    layout, root = "class folders", image_root
    metas = class_folders.read_class_folders(image_root, boxes_file, fractions=fractions,
                                             seed=seed, clip_boxes=clip)
  if splits[0] not in metas:
    raise wsol_metadata.MetadataNotFoundError(
        f"{root}: no training split {splits[0]!r} (splits: {', '.join(metas) or 'none'})")
  labels_file = (os.path.join(metadata_dir, "<split>", "class_labels.txt") if metadata_dir
                 else f"the class sub-folders of {image_root}")
  labels = sorted({v for m in metas.values() for v in m.labels.values()})
  if num_classes:
    k = num_classes
  else:
    k = labels[-1] + 1 if labels else 0
    missing = sorted(set(range(k)) - set(labels))
    if missing:
      raise wsol_metadata.MetadataError(
          f"{labels_file}: labels must be 0..K-1 with every class present; labels "
          f"{missing[:10]}{' ...' if len(missing) > 10 else ''} of 0..{k - 1} have no image "
          "(set data.metadata.num_classes to allow classes without images)")
  masks = _attach_masks(metas, mask_root or image_root, use_masks)
  max_boxes = max([len(b) for m in metas.values() for b in m.boxes.values()] or [1])
  train = metas[splits[0]]
  sides = [(w + h) / 2 for w, h in (train.sizes[i] for i in train.image_ids)]
  names = wsol_metadata._class_names(train, k)  # folder names when ids are <class>/<file>
  facts = DataFacts(layout=layout, root=root, num_classes=k, class_names=tuple(names),
                    max_boxes=int(max_boxes), masks=masks,
                    num_images={s: len(m.image_ids) for s, m in metas.items()},
                    median_side=int(round(float(np.median(sides)))) if sides else 0)
  log.info("%s", facts.describe())
  return metas, facts


def _attach_masks(metas: dict[str, wsol_metadata.SplitMetadata], mask_root: str,
                  use_masks: bool) -> dict[str, str]:
  """Attaches ``<mask_root>/mask/<id stem>.png`` to each box split the folder covers fully;
  returns split -> where its masks come from."""
  out = {s: f"localization.txt mask lines (mask_root {mask_root})"
         for s, m in metas.items() if m.has_masks}
  folder = os.path.join(mask_root, class_folders.MASK_FOLDER) if mask_root else ""
  if not folder or not os.path.isdir(folder):
    return out
  for split, meta in metas.items():
    if meta.has_masks:
      continue
    paths = {i: f"{class_folders.MASK_FOLDER}/{os.path.splitext(i)[0]}.png"
             for i in meta.image_ids}
    absent = [p for p in paths.values() if not os.path.isfile(os.path.join(mask_root, p))]
    if absent:
      log.warning("mask folder %s found but %d of %d %s images have no mask (e.g. %s): "
                  "%s is evaluated without masks (no PxAP)", folder, len(absent), len(paths),
                  split, os.path.join(mask_root, absent[0]), split)
      continue
    if not use_masks:
      log.info("mask folder %s covers split %s but data.use_masks=False: not used", folder,
               split)
      continue
    meta.mask_paths.update({i: [p] for i, p in paths.items()})
    meta.ignore_paths.update({i: "" for i in paths})
    out[split] = f"{folder}/<image id>.png"
  return out


def class_count_error(model_classes: int, data_classes: int, where: str
                      ) -> config_lib.ConfigError:
  """The one-line error of a model whose class count is not the data's."""
  return config_lib.ConfigError(
      f"model.num_classes={model_classes} but the data ({where}) has {data_classes} classes: "
      f"set --config.model.num_classes={data_classes}, or 0 to take it from the data")


def _auto_size(median_side: int) -> int:
  lo, hi = AUTO_SIZE_RANGE
  return int(min(max(round(median_side / SIZE_MULTIPLE) * SIZE_MULTIPLE, lo), hi))


def resolve_config(config: Any) -> tuple[Any, list[str]]:
  """(a copy of ``config`` with its "0 = from the data" keys filled, lines saying what was
  chosen). See the module docstring; reads the data only when a key asks for it."""
  config = copy.deepcopy(config)
  d, lines = config.data, []
  derived = is_derived(d)
  facts = data_facts(d) if derived else None
  if facts is not None:
    lines.append(facts.describe())
    if int(d.max_boxes) == 0:
      lines.append(f"data.max_boxes=0 -> {facts.max_boxes} (the most boxes of an image)")
    val = data_config.resolve_split(d, "val")
    if config.eval.select_split == "val" and val not in facts.num_images:
      config.eval.select_split = ""
      lines.append(f"no {val!r} split: eval.select_split='' (the last checkpoint is kept)")
    if d.test_split and d.test_split not in facts.num_images:
      lines.append(f"no {d.test_split!r} split: no test evaluation (data.test_split='')")
      d.test_split = ""
  want = int(config.model.num_classes)
  if want == 0 or facts is not None:
    from wsol_jax.data import sources  # the sources import this module
    have = facts.num_classes if facts is not None else sources.dataset_info(d).num_classes
    where = (f"{facts.layout} {facts.root}" if facts is not None
             else f"data.name={d.name!r}")
    if want == 0:
      config.model.num_classes = have
      lines.append(f"model.num_classes=0 -> {have} (from the data)")
    elif want != have:
      raise class_count_error(want, have, where)
  if int(d.image_size) == 0:
    if facts is None:
      raise config_lib.ConfigError(
          "data.image_size=0 (from the data) needs data.name='wsol_metadata' with "
          f"data.metadata.dataset=''; set data.image_size for data.name={d.name!r}")
    d.image_size = _auto_size(facts.median_side)
    lines.append(f"data.image_size=0 -> {d.image_size} (median image side "
                 f"{facts.median_side} px, to a multiple of {SIZE_MULTIPLE} in "
                 f"{list(AUTO_SIZE_RANGE)})")
  if int(d.resize_size) == 0:
    h, w = data_config.hw(d.image_size)
    d.resize_size = (int(round(h * 8 / 7)) if h == w
                     else (int(round(h * 8 / 7)), int(round(w * 8 / 7))))
    lines.append(f"data.resize_size=0 -> {d.resize_size} (image_size x 8/7)")
  t = config.training
  if int(t.total_steps) < 0:
    if facts is not None:
      num_train = facts.num_images[data_config.resolve_split(d, "train")]
    else:
      from wsol_jax.data import sources
      num_train = len(sources.make_source(d, data_config.resolve_split(d, "train")))
    per_epoch = num_train // int(t.batch_size)
    if per_epoch == 0:
      raise config_lib.ConfigError(f"training.batch_size={t.batch_size} is larger than the "
                                   f"{num_train} training images")
    t.total_steps = max(AUTO_EPOCHS * per_epoch, AUTO_MIN_STEPS)
    lines.append(f"training length from the data: {t.total_steps} steps = max({AUTO_EPOCHS} "
                 f"epochs x {per_epoch} steps of batch {t.batch_size} over {num_train} "
                 f"images, {AUTO_MIN_STEPS}) ~ {t.total_steps / per_epoch:.0f} epochs "
                 "(set training.total_steps to choose)")
  return config, lines

