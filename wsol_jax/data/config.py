"""The data config (an ``ml_collections.ConfigDict``) and its defaults.

Fields of ``cfg_data`` (``default_data_config()``; '' / 0 mean "dataset default"):

  name           'synthetic' | 'cub' | 'stanford_dogs' | 'wsol_metadata' | 'voc' (a VOCdevkit
                 folder, ``voc.root``) | 'voc_tfds' (TFDS voc/2012) | 'fractal' (formula-driven
                 images rendered on the fly, ``fractal``: pretraining without natural images).
  data_dir       TFDS data directory for 'synthetic', 'cub', 'stanford_dogs', 'voc_tfds'
                 ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  download       TFDS only: download and prepare a missing dataset (needs network
                 and TensorFlow). Default False: a missing dataset raises an error
                 that says how to get it.
  train_split    split for training ('train').
  val_split      held-out model-selection split: synthetic and fractal 'val'; wsol_metadata 'val'
                 (CUBV2 for CUB, ImageNetV2 for ILSVRC); CUB/Dogs on TFDS have none ('').
  test_split     evaluation split ('test'; VOC 2012 has no annotated test set: its val is
                 'val' in the folder, 'validation' on TFDS).
  image_size     train crop and eval resize, int or (h, w) (224; e.g. 64 for the demo;
                 0 = from the data's median image side, ``derive``).
  resize_size    train resize before the random crop, int or (h, w) (256; e.g. 72;
                 0 = image_size x 8/7).
  random_flip    random horizontal flip in training (True).
  max_boxes      G, boxes per eval row (0 = default: 1 for CUB/synthetic/OpenImages,
                 16 for Stanford Dogs, 20 for ILSVRC, 64 for VOC, the most boxes of an
                 image for wsol_metadata without a preset). Images with more boxes keep the
                 first G and log a warning.
  train_boxes    also yield padded 'boxes' in training batches (False).
  use_masks      deliver masks in eval batches when the dataset has them (True).
  mask_threshold TFDS masks: value above which a pixel is object (127).
  num_epochs     training epochs, 0 = repeat forever (0).
  max_consecutive_unreadable  training stops with an error naming the split and a few files
                 when this many records in a row cannot be read, and before the first step
                 when none of the split's first this-many records can (100; 0 = no limit).
  worker_count   grain worker processes (0 = in the main process).
  worker_buffer_size  batches each worker prepares ahead (2).
  read_threads   grain reader threads per process (8).
  read_prefetch  records read ahead per process (128).
  metadata       for name='wsol_metadata' (your own data: ``wsol_jax.data.derive``):
    dataset        'CUB' | 'ILSVRC' | 'OpenImages': a preset (class count, max_boxes);
                   '' (default) = derive classes, max_boxes and masks from the data.
    metadata_dir   e.g. 'wsolevaluation/metadata/CUB' (holds train/ val/ test/); '' with
                   dataset='' = class sub-folders of image_root plus a boxes file.
    image_root     e.g. 'dataset/CUB'.
    val_image_root images of the val split when kept elsewhere (e.g. CUBV2; '' = image_root).
    mask_root      e.g. 'dataset/OpenImages' ('' = image_root); with dataset='' its mask/
                   folder (mask/<image id without extension>.png) gives box datasets masks.
    num_classes    0 = by dataset (dataset='': max label + 1 over the splits).
    boxes_file     class sub-folders: '' = <image_root>/boxes.csv, rows
                   'relative_path,x0,y0,x1,y1[,split]' (``wsol_jax.data.class_folders``).
    split_fractions  class sub-folders without a split column: (train, val, test) shares
                   of each class ((0.8, 0.1, 0.1)), shuffled by split_seed (0).
    clip_boxes     clip boxes that leave their image (counted and logged) instead of
                   failing on them (False). Every split's metadata is validated before
                   the first training step (ids, labels, sizes, boxes; file:line).
  voc            for name='voc' / 'voc_tfds' (AG-CAM's VOC protocol; ``wsol_jax.data.voc``):
    root           the VOCdevkit/VOC2012 folder (Annotations/, JPEGImages/, ImageSets/Main/);
                   name='voc' only.
    single_class   keep only images with exactly one class (True: the paper's protocol).
                   False labels a multi-class image with the class of its first object.
    difficult_labels  a class whose instances are all 'difficult' counts as a label of the
                   image (False: VOC's per-class image lists mark it 0, not 1).
    difficult_boxes   difficult instances of the image's class are ground truth (True: the
                   official code takes every instance).
    truncated_boxes   truncated instances likewise (True). An image left without a box by
                   these two is dropped (counted in the log).
    clip_boxes     clip boxes that leave their image (counted and logged) instead of failing
                   on them (False; name='voc' only: TFDS cannot hold such boxes).
  synthetic      for name='synthetic' (see ``synthetic.SyntheticParams``;
                 ``synthetic_demo_config('easy'|'default'|'hard')`` applies a preset):
    generate       create the dataset in data_dir if it is missing (True).
    num_classes, num_train, num_val, num_test, seed, min_size, max_size,
    object_scale, aspect, rotation, texture_prob, clutter, noise_std, min_contrast,
    polarity.
  fractal        for name='fractal' (see ``fractal.FractalParams``; splits 'train', 'val',
                 'test' hold disjoint instances of the same categories):
    num_classes, train_per_class, val_per_class, test_per_class, seed, min_size, max_size
    (canvas side range), families ('ifs' FractalDB IFS fractals, 'contour' RCDB radial
    contours), num_points, object_scale, jitter, fill_min.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from wsol_jax.data import fractal, synthetic_render

NAMES = ("synthetic", "cub", "stanford_dogs", "wsol_metadata", "voc", "voc_tfds", "fractal")

# VOC 2012 has crowds of one class (dozens of people) in single-class images.
_MAX_BOXES = {"synthetic": 1, "fractal": 1, "cub": 1, "stanford_dogs": 16, "voc": 64,
              "voc_tfds": 64}
_METADATA_MAX_BOXES = {"CUB": 1, "ILSVRC": 20, "OpenImages": 1}


def default_data_config() -> ml_collections.ConfigDict:
  """The default data config (synthetic dataset at 224; see the module docstring)."""
  cfg = ml_collections.ConfigDict()
  cfg.name = "synthetic"
  cfg.data_dir = ""
  cfg.download = False
  cfg.train_split = "train"
  cfg.val_split = ""
  cfg.test_split = "test"
  cfg.image_size = 224
  cfg.resize_size = 256
  cfg.random_flip = True
  cfg.max_boxes = 0
  cfg.train_boxes = False
  cfg.use_masks = True
  cfg.mask_threshold = 127
  cfg.num_epochs = 0
  cfg.max_consecutive_unreadable = 100
  cfg.worker_count = 0
  cfg.worker_buffer_size = 2
  cfg.read_threads = 8
  cfg.read_prefetch = 128
  cfg.metadata = ml_collections.ConfigDict(dict(
      dataset="", metadata_dir="", image_root="", val_image_root="", mask_root="",
      num_classes=0, clip_boxes=False, boxes_file="", split_fractions=(0.8, 0.1, 0.1),
      split_seed=0))
  cfg.voc = ml_collections.ConfigDict(dict(
      root="", single_class=True, difficult_labels=False, difficult_boxes=True,
      truncated_boxes=True, clip_boxes=False))
  render = synthetic_render.RenderParams()
  cfg.synthetic = ml_collections.ConfigDict(dict(
      generate=True, num_train=8000, num_val=300, num_test=600, seed=0,
      **dataclasses.asdict(render)))
  cfg.fractal = ml_collections.ConfigDict(dataclasses.asdict(fractal.FractalParams()))
  return cfg


# Difficulty presets of the synthetic dataset (RenderParams overrides). All keep
# objects small and off-centre enough that a centred box localises only ~22 %.
SYNTHETIC_PRESETS: dict[str, dict[str, Any]] = {
    # Solid, upright shapes and little clutter: the quickest to learn.
    "easy": dict(rotation=0.0, aspect=(0.9, 1.1), texture_prob=0.0, clutter=0.25),
    # 'easy' with light objects on dark backgrounds (distractors keep any colour): what a
    # tiny ViT learns from scratch on a CPU in minutes (on 'easy' it must first find out which
    # colour is the object; runs in benchmarks/README.md).
    "easy_light": dict(rotation=0.0, aspect=(0.9, 1.1), texture_prob=0.0, clutter=0.25,
                       polarity="light_object"),
    "default": {},
    # Any rotation, strong stretch, mostly textured objects, twice the clutter.
    "hard": dict(object_scale=(0.3, 0.65), aspect=(0.7, 1.45), rotation=180.0,
                 texture_prob=0.8, clutter=1.0),
}


def synthetic_demo_config(difficulty: str = "easy") -> ml_collections.ConfigDict:
  """Synthetic data at 64x64 (resize 72 -> crop 64): a CPU-sized demo.

  A tiny ViT (patch 8, width 96, depth 4, AdamW 1e-3, batch 64) trained from
  scratch for 2000 steps reached 67 % test accuracy on 'easy' and 45 % on
  'default' (chance: 17 %), hence 'easy' for the 10-minute CPU demo.

  Args:
    difficulty: 'easy' | 'easy_light' | 'default' | 'hard' (``SYNTHETIC_PRESETS``).
  """
  if difficulty not in SYNTHETIC_PRESETS:
    raise ValueError(f"difficulty must be one of {sorted(SYNTHETIC_PRESETS)}, got {difficulty!r}")
  cfg = default_data_config()
  cfg.image_size = 64
  cfg.resize_size = 72
  cfg.synthetic.update(SYNTHETIC_PRESETS[difficulty])
  return cfg


def hw(size: Any) -> tuple[int, int]:
  """An int or (h, w) size -> (h, w)."""
  if isinstance(size, int):
    return (size, size)
  h, w = size
  return (int(h), int(w))


def resolve_max_boxes(cfg: Any) -> int:
  """``cfg.max_boxes`` or the dataset default."""
  if int(cfg.max_boxes) > 0:
    return int(cfg.max_boxes)
  if cfg.name == "wsol_metadata":
    if not cfg.metadata.dataset:
      from wsol_jax.data import derive  # reads the data: imported only here
      return derive.data_facts(cfg).max_boxes
    return _METADATA_MAX_BOXES.get(cfg.metadata.dataset, 20)
  return _MAX_BOXES.get(cfg.name, 16)


def resolve_split(cfg: Any, which: str) -> str:
  """'train' | 'val' | 'test' -> the configured split name ('' when there is none)."""
  value = cfg[f"{which}_split"]
  if value:
    return value
  if which == "val" and cfg.name in ("synthetic", "wsol_metadata", "fractal"):
    return "val"
  return "" if which == "val" else which


def synthetic_params(cfg: Any) -> dict[str, Any]:
  """The ``ensure_synthetic_dataset`` keyword arguments of ``cfg.synthetic``."""
  params = dict(cfg.synthetic.to_dict() if hasattr(cfg.synthetic, "to_dict") else cfg.synthetic)
  params.pop("generate", None)
  return params
