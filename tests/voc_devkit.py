"""A small generated VOCdevkit/VOC2012 folder (XML written here) and TFDS voc/2012 built from it."""
from __future__ import annotations

import contextlib
import os
import pathlib
import types

import numpy as np
from PIL import Image

# (class, box (xmin, ymin, xmax, ymax) in VOC's 1-based inclusive pixels, difficult, truncated)
Obj = tuple[str, tuple[int, int, int, int], int, int]
COLOURS = {"cat": (230, 60, 60), "dog": (60, 230, 60), "person": (60, 60, 230)}


def xml_text(image_id: str, size: tuple[int, int] | None, objects: list[Obj],
             extra_object_xml: str = "") -> str:
  """A VOC annotation (``size`` = (W, H); None leaves <size> out)."""
  size_xml = (f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
              if size else "")
  objs = "".join(
      f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{t}</truncated>"
      f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
      f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
      # A part with its own name and box: only the object's direct children count.
      f"<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
      f"<ymax>2</ymax></bndbox></part></object>\n"
      for name, b, d, t in objects)
  return (f"<annotation>\n<folder>VOC2012</folder><filename>{image_id}.jpg</filename>\n"
          f"{size_xml}\n<segmented>0</segmented>\n{objs}{extra_object_xml}</annotation>\n")


def random_objects(rng: np.random.Generator, w: int, h: int, label: str, n: int) -> list[Obj]:
  out = []
  for _ in range(n):
    x0, y0 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
    out.append((label, (x0, y0, min(w, x0 + w // 3), min(h, y0 + h // 3)), 0, 0))
  return out


# Hand-made images of the 'val' split: (id, size, objects) and what AG-CAM's rule makes of them.
VAL_SPECIAL: list[tuple[str, tuple[int, int], list[Obj]]] = [
    # Two classes: excluded.
    ("2012_100000", (60, 50), [("cat", (5, 5, 30, 30), 0, 0), ("dog", (30, 20, 60, 50), 0, 0)]),
    # A dog plus a difficult cat: single-class (dog); the dog's difficult and truncated
    # instances are ground truth too.
    ("2012_100001", (64, 48), [("dog", (3, 4, 30, 40), 0, 0), ("cat", (40, 5, 60, 20), 1, 0),
                               ("dog", (31, 2, 64, 20), 1, 0), ("dog", (35, 25, 50, 48), 0, 1)]),
    # Only difficult objects: no class, excluded.
    ("2012_100002", (50, 50), [("person", (10, 10, 40, 40), 1, 0)]),
]


def write_devkit(root: pathlib.Path, n_train: int = 24, n_val: int = 6, seed: int = 0,
                 classes: tuple[str, ...] = ("cat", "dog", "person")) -> pathlib.Path:
  """Writes ``root/VOCdevkit/VOC2012`` with train/val lists; returns the VOC2012 folder.

  Each generated image shows its objects as filled rectangles in the class's colour on a dark
  background; train and val get 1-3 instances of one class each (+ one 2-class train image),
  val also holds ``VAL_SPECIAL``.
  """
  voc = root / "VOCdevkit" / "VOC2012"
  for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
    (voc / d).mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  splits: dict[str, list[str]] = {"train": [], "val": []}
  for split, n, year in (("train", n_train, 2008), ("val", n_val, 2009)):
    for i in range(n):
      image_id = f"{year}_{i:06d}"
      w, h = int(rng.integers(40, 72)), int(rng.integers(40, 72))
      objects = random_objects(rng, w, h, classes[i % len(classes)], 1 + i % 3)
      if split == "train" and i == 1:
        objects += random_objects(rng, w, h, classes[(i + 1) % len(classes)], 1)
      write_image(voc, image_id, (w, h), objects, rng)
      splits[split].append(image_id)
  for image_id, size, objects in VAL_SPECIAL:
    write_image(voc, image_id, size, objects, rng)
    splits["val"].append(image_id)
  for split, ids in splits.items():
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
  return voc


def write_image(voc: pathlib.Path, image_id: str, size: tuple[int, int], objects: list[Obj],
                rng: np.random.Generator) -> None:
  w, h = size
  image = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
  for name, (x0, y0, x1, y1), _, _ in objects:
    image[y0 - 1:y1, x0 - 1:x1] = COLOURS.get(name, (200, 200, 200))  # 1-based inclusive
  Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
  (voc / "Annotations" / f"{image_id}.xml").write_text(xml_text(image_id, size, objects))


@contextlib.contextmanager
def _offline_voc_builder(devkit_parent: pathlib.Path):
  """TFDS's own ``voc`` builder, reading ``devkit_parent/VOCdevkit`` instead of downloading.

  Only its download step and its TensorFlow file reader are replaced (TensorFlow is not
  installed); the features, XML parsing and array_record writing are TFDS's.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.object_detection import voc as voc_lib

  def split_generators(self, dl_manager):
    del dl_manager
    return [tfds.core.SplitGenerator(name=name, gen_kwargs=dict(data_path=os.fspath(
        devkit_parent), set_name=set_name)) for name, set_name in (("train", "train"),
                                                                    ("validation", "val"))]

  shim = types.SimpleNamespace(io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=open)))
  saved = voc_lib.tf, voc_lib.Voc._split_generators
  voc_lib.tf, voc_lib.Voc._split_generators = shim, split_generators
  try:
    yield
  finally:
    voc_lib.tf, voc_lib.Voc._split_generators = saved


def build_tfds_voc(devkit_parent: pathlib.Path, data_dir: pathlib.Path) -> None:
  """Prepares TFDS ``voc/2012`` (array_record) in ``data_dir`` from a generated devkit."""
  import tensorflow_datasets as tfds
  with _offline_voc_builder(devkit_parent):
    builder = tfds.builder("voc/2012", data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
