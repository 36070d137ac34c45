"""A folder of class sub-folders plus a boxes file, read as wsolevaluation split metadata.

Layout (``data.metadata.image_root`` = ROOT, ``data.metadata.metadata_dir`` = ''):

  ROOT/<class_name>/<image>          one sub-folder per class; labels 0..K-1 follow the
                                     sorted folder names. Images: .jpg .jpeg .png .bmp
                                     .webp (any case), also in deeper sub-folders.
  ROOT/boxes.csv                     (or ``data.metadata.boxes_file``) one row per box:
      relative_path,x0,y0,x1,y1[,split]
                                     relative_path as under ROOT ('cat/001.jpg'); pixel
                                     corners with 0 <= x0 <= x1 <= W, 0 <= y0 <= y1 <= H;
                                     optional split 'train' | 'val' | 'test' (on every
                                     row or on none). A first row starting with
                                     'relative_path' is a header. Blank lines and lines
                                     starting with '#' are skipped.
  ROOT/mask/                         optional per-image masks (``derive``), never a class.

Without a split column each class is split by ``split_fractions`` (train, val, test) after
a shuffle seeded by ``split_seed``: deterministic, every class in every split it has
images for (at least one training image per class). Images without a box row are kept
(they train; evaluation counts them as images without a box). Bad rows raise
``MetadataError`` naming ``file:line``.

The result is the ``SplitMetadata`` the wsolevaluation layout gives, so both layouts feed
the same ``WsolMetadataSource``.
"""
from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image

from wsol_jax.data.wsol_metadata import MetadataError, MetadataNotFoundError, SplitMetadata

log = logging.getLogger("wsol_jax.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val", "test")
MASK_FOLDER = "mask"
HEADER = "relative_path,x0,y0,x1,y1[,split]"


def scan_class_folders(root: str) -> tuple[list[str], dict[str, int]]:
  """(sorted class names, relative image path -> label) of ``root``'s class sub-folders."""
  if not os.path.isdir(root):
    raise MetadataNotFoundError(f"data.metadata.image_root {root!r} is not a folder")
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and d != MASK_FOLDER
                   and not d.startswith("."))
  if not classes:
    raise MetadataNotFoundError(
        f"{root} has no class sub-folders: expected ROOT/<class_name>/<image> plus "
        f"ROOT/boxes.csv ({HEADER}), or set data.metadata.metadata_dir to a wsolevaluation "
        "metadata folder (train/ val/ test/)")
  labels: dict[str, int] = {}
  for k, name in enumerate(classes):
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
      dirnames.sort()
      for f in sorted(filenames):
        if f.lower().endswith(IMAGE_EXTENSIONS):
          rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
          labels[rel] = k
  empty = [c for k, c in enumerate(classes) if k not in set(labels.values())]
  if empty:
    raise MetadataError(f"{root}: class folder(s) without images ({IMAGE_EXTENSIONS}): "
                        f"{', '.join(empty[:5])}")
  return classes, labels


def _read_boxes(path: str, labels: dict[str, int]):
  """{relative_path: [box rows (lineno, x0, y0, x1, y1)]}, {relative_path: split}."""
  if not os.path.isfile(path):
    raise MetadataNotFoundError(f"boxes file {path} not found: expected one row per box "
                                f"'{HEADER}' (data.metadata.boxes_file)")
  boxes: dict[str, list[tuple[int, float, float, float, float]]] = {}
  splits: dict[str, tuple[str, int]] = {}
  with_split = None
  with open(path, encoding="utf-8") as f:
    for lineno, raw in enumerate(f, 1):
      line = raw.strip()
      if not line or line.startswith("#"):
        continue
      fields = [v.strip() for v in line.split(",")]
      if fields[0] == "relative_path":
        continue
      if len(fields) not in (5, 6) or not fields[0]:
        raise MetadataError(f"{path}:{lineno}: expected '{HEADER}', got {line!r}")
      if with_split is None:
        with_split = len(fields) == 6
      elif with_split != (len(fields) == 6):
        raise MetadataError(f"{path}:{lineno}: the split column must be on every row or on "
                            f"none, got {line!r}")
      rel = fields[0].replace("\\", "/")
      if rel not in labels:
        raise MetadataError(f"{path}:{lineno}: {rel!r} is not an image in a class sub-folder "
                            f"of the image root")
      try:
        x0, y0, x1, y1 = (float(v) for v in fields[1:5])
      except ValueError:
        raise MetadataError(f"{path}:{lineno}: box values must be numbers, got {line!r}"
                            ) from None
      boxes.setdefault(rel, []).append((lineno, x0, y0, x1, y1))
      if with_split:
        split = fields[5]
        if split not in SPLITS:
          raise MetadataError(f"{path}:{lineno}: split must be one of {SPLITS}, got {split!r}")
        first = splits.setdefault(rel, (split, lineno))
        if first[0] != split:
          raise MetadataError(f"{path}:{lineno}: {rel!r} is in split {split!r} here but in "
                              f"{first[0]!r} at line {first[1]}")
  return boxes, {k: v[0] for k, v in splits.items()}


def _assign_splits(labels: dict[str, int], fractions: tuple[float, ...], seed: int
                   ) -> dict[str, str]:
  """Per class: shuffle (seeded), then the first share to test, the next to val, the rest
  to train (at least one training image per class)."""
  if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0:
    raise MetadataError(f"data.metadata.split_fractions must be (train, val, test) with "
                        f"train > 0, got {tuple(fractions)}")
  total = float(sum(fractions))
  out = {}
  for k in sorted(set(labels.values())):
    paths = sorted(p for p, label in labels.items() if label == k)
    order = np.random.default_rng([int(seed), k]).permutation(len(paths))
    n = len(paths)
    n_test = min(int(round(n * fractions[2] / total)), n - 1)
    n_val = min(int(round(n * fractions[1] / total)), n - 1 - n_test)
    for rank, i in enumerate(order):
      out[paths[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
  return out


def read_class_folders(root: str, boxes_file: str = "", *, fractions=(0.8, 0.1, 0.1),
                       seed: int = 0, clip_boxes: bool = False) -> dict[str, SplitMetadata]:
  """``SplitMetadata`` of every split ('train', 'val', 'test'; a split without images is
  left out) of a class-folder dataset (module docstring)."""
  classes, labels = scan_class_folders(root)
  path = boxes_file or os.path.join(root, "boxes.csv")
  boxes, given = _read_boxes(path, labels)
  split_of = given if given else _assign_splits(labels, tuple(fractions), seed)
  if given:
    missing = sorted(set(labels) - set(given))
    if missing:
      log.warning("%s: %d image(s) under %s have no row (so no split) and are not used, e.g. "
                  "%s", path, len(missing), root, missing[0])
  out: dict[str, SplitMetadata] = {}
  unreadable = []
  for rel in sorted(split_of):
    try:
      with Image.open(os.path.join(root, rel)) as im:  # reads the header only
        size = im.size
    except (OSError, ValueError) as e:
      unreadable.append(f"{rel}: {e}")
      continue
    split = split_of[rel]
    meta = out.setdefault(split, SplitMetadata([], {}, {}, {}, {}, {}))
    meta.image_ids.append(rel)
    meta.labels[rel] = labels[rel]
    meta.sizes[rel] = size
    w, h = size
    for lineno, x0, y0, x1, y1 in boxes.get(rel, []):
      if x1 < x0 or y1 < y0:
        raise MetadataError(f"{path}:{lineno}: invalid box of {rel!r} (need x0 <= x1, "
                            f"y0 <= y1): {x0:g},{y0:g},{x1:g},{y1:g}")
      if min(x0, y0) < 0 or x1 > w or y1 > h:
        if not clip_boxes:
          raise MetadataError(f"{path}:{lineno}: box of {rel!r} leaves the image ({w}x{h}): "
                              f"{x0:g},{y0:g},{x1:g},{y1:g} (set data.metadata.clip_boxes=True "
                              "to clip such boxes)")
        meta.clipped_boxes += 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 < x0 or y1 < y0:
          raise MetadataError(f"{path}:{lineno}: box of {rel!r} lies outside the image")
      meta.boxes.setdefault(rel, []).append((x0, y0, x1, y1))
  if unreadable:
    log.warning("%s: %d unreadable image(s) left out, e.g. %s", root, len(unreadable),
                unreadable[0])
  if "train" not in out:
    raise MetadataError(f"{path}: no training images (every image is in val/test)")
  out = {s: out[s] for s in SPLITS if s in out}
  log.info("%s: %d classes, %s images (%s)", root, len(classes),
           "/".join(str(len(out[s].image_ids)) for s in SPLITS if s in out),
           "/".join(s for s in SPLITS if s in out))
  return out
