"""WSOL data: record sources (TFDS, wsolevaluation metadata, synthetic) and grain pipelines.

Modules (one job each):
  records          the record format every source delivers.
  images           decoding to RGB uint8 / gray masks.
  geometry         wsolevaluation box rescale, nearest mask resize, box moves.
  tfds_sources     CUB / Stanford Dogs / wsol_synthetic through tfds.data_source.
  wsol_metadata    wsolevaluation metadata folders (CUB, CUBV2, ILSVRC, OpenImages).
  voc              PASCAL VOC 2012 (VOCdevkit folder, TFDS voc/2012) in AG-CAM's protocol.
  synthetic_render drawing one synthetic image.
  synthetic        the wsol_synthetic TFDS builder and ensure_synthetic_dataset.
  fractal          formula-driven images (IFS fractals, radial contours) rendered on the fly.
  transforms       grain transforms (train augmentation, eval rows, skip counting).
  config           the data ConfigDict and its documented fields.
  class_folders    class sub-folders plus boxes.csv, read as wsolevaluation metadata.
  derive           what a dataset without a preset determines (classes, boxes, masks,
                   sizes) and the "0 = from the data" config keys.
  sources          make_source / dataset_info from a config.
  pipeline         build_train_iterator / build_eval_iterator.

Names below are imported lazily so that ``import wsol_jax.data.<module>``
(e.g. in grain or generation worker processes) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_train_iterator": "pipeline",
    "build_eval_iterator": "pipeline",
    "TrainIterator": "pipeline",
    "EvalIterator": "pipeline",
    "train_loader": "pipeline",
    "eval_loader": "pipeline",
    "local_batch_size": "pipeline",
    "dataset_info": "sources",
    "make_source": "sources",
    "DatasetInfo": "sources",
    "default_data_config": "config",
    "synthetic_demo_config": "config",
    "ensure_synthetic_dataset": "synthetic",
    "SyntheticParams": "synthetic",
    "TfdsSource": "tfds_sources",
    "DatasetNotFoundError": "tfds_sources",
    "WsolMetadataSource": "wsol_metadata",
    "MetadataError": "wsol_metadata",
    "MetadataNotFoundError": "wsol_metadata",
    "UnreadableDataError": "records",
    "DataFacts": "derive",
    "data_facts": "derive",
    "resolve_config": "derive",
    "class_count_error": "derive",
    "VocFolderSource": "voc",
    "VocTfdsSource": "voc",
    "VocAnnotationError": "voc",
    "VocNotFoundError": "voc",
    "FractalSource": "fractal",
    "FractalParams": "fractal",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
