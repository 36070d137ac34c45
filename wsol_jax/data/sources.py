"""Builds the record source named by a data config (see ``config``)."""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from wsol_jax.data import config as config_lib
from wsol_jax.data import fractal, records, synthetic, tfds_sources, voc, wsol_metadata

_TFDS_NAMES = {"cub": tfds_sources.CUB, "stanford_dogs": tfds_sources.STANFORD_DOGS}


class Source(Protocol):
  """What the pipelines need from a source (``TfdsSource``, ``WsolMetadataSource``,
  ``voc.VocFolderSource``, ``voc.VocTfdsSource``, ``fractal.FractalSource``)."""
  num_classes: int
  class_names: list[str]
  has_masks: bool

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> records.Record:
    ...


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trainer needs to know about the configured dataset."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  has_masks: bool
  max_boxes: int
  splits: dict[str, str]  # 'train' | 'val' | 'test' -> split name ('' = none)


def make_source(cfg: Any, split: str) -> Source:
  """The record source of ``split`` (a split name such as 'train', 'val', 'test[:10%]').

  Raises:
    ValueError: unknown ``cfg.name``.
    tfds_sources.DatasetNotFoundError / wsol_metadata.MetadataNotFoundError /
    voc.VocNotFoundError:
      the data is missing; the message says how to get it.
  """
  if not split:
    raise ValueError(f"dataset {cfg.name!r} has no such split (empty split name)")
  data_dir = cfg.data_dir or None
  use_masks = bool(cfg.use_masks)
  if cfg.name == "synthetic":
    params = config_lib.synthetic_params(cfg)
    p = synthetic.SyntheticParams.from_kwargs(**params)
    data_dir = data_dir or tfds_sources.default_data_dir()
    if cfg.synthetic.generate:
      name = synthetic.ensure_synthetic_dataset(data_dir, **params)
    else:
      name = f"{synthetic.DATASET_NAME}/{p.config_name}"
    hint = ("Generate it with wsol_jax.data.synthetic.ensure_synthetic_dataset("
            f"{data_dir!r}, **params) or set cfg.synthetic.generate=True.")
    return tfds_sources.TfdsSource(name, split, data_dir, use_masks=use_masks,
                                   mask_threshold=cfg.mask_threshold,
                                   missing_hint=hint, builder_module=synthetic.__name__)
  if cfg.name == "fractal":
    return fractal.FractalSource(fractal.FractalParams.from_config(cfg.fractal), split)
  if cfg.name in _TFDS_NAMES:
    return tfds_sources.TfdsSource(_TFDS_NAMES[cfg.name], split, data_dir,
                                   download=bool(cfg.download), use_masks=use_masks,
                                   mask_threshold=cfg.mask_threshold)
  if cfg.name == "wsol_metadata":
    m = cfg.metadata
    image_root = m.image_root
    if m.val_image_root and split == config_lib.resolve_split(cfg, "val"):
      image_root = m.val_image_root
    if not m.dataset:  # no preset: the data's own facts (one parse per process)
      from wsol_jax.data import derive
      facts = derive.data_facts(cfg)
      return wsol_metadata.WsolMetadataSource(
          m.metadata_dir or m.image_root, split, image_root, mask_root=m.mask_root or None,
          num_classes=facts.num_classes, use_masks=use_masks,
          meta=derive.split_metadata(cfg, split))
    return wsol_metadata.WsolMetadataSource(
        m.metadata_dir, split, image_root, mask_root=m.mask_root or None,
        dataset=m.dataset, num_classes=m.num_classes or None,
        use_masks=use_masks, clip_boxes=bool(m.clip_boxes))
  if cfg.name == "voc":
    return voc.VocFolderSource(cfg.voc.root, split, voc.VocOptions.from_config(cfg.voc))
  if cfg.name == "voc_tfds":
    return voc.VocTfdsSource(split, data_dir, voc.VocOptions.from_config(cfg.voc),
                             download=bool(cfg.download))
  raise ValueError(f"unknown dataset name {cfg.name!r}; expected one of {config_lib.NAMES}")


def dataset_info(cfg: Any, source: Source | None = None) -> DatasetInfo:
  """Class count and names, masks, G and split names of the configured dataset.

  Opens the training split, else the test split (or uses ``source``) to read
  the class names.
  """
  splits = {k: config_lib.resolve_split(cfg, k) for k in ("train", "val", "test")}
  if source is None:
    try:
      source = make_source(cfg, splits["train"])
    except FileNotFoundError:
      if not splits["test"]:
        raise
      source = make_source(cfg, splits["test"])
  return DatasetInfo(name=cfg.name, num_classes=int(source.num_classes),
                     class_names=tuple(source.class_names), has_masks=bool(source.has_masks),
                     max_boxes=config_lib.resolve_max_boxes(cfg), splits=splits)
