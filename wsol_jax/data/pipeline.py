"""grain pipelines: training and evaluation batches for data-parallel JAX.

Entry points (``cfg_data`` fields are documented in ``wsol_jax.data.config``):

  it = build_train_iterator(cfg_data, batch_size=64, seed=0)
  batch = next(it)                      # this process's share of the global batch
  state = it.get_state()                # bytes; it.set_state(state) resumes exactly
                                        # (orbax: grain.PyGrainCheckpointSave(it) / Restore)
  for batch in build_eval_iterator(cfg_data, "test", batch_size=64): ...
  info = dataset_info(cfg_data)         # num_classes, class_names, ...

``batch_size`` is the GLOBAL batch size: it must be divisible by
``jax.device_count()``; each process gets ``batch_size // jax.process_count()``
rows (``grain.ShardByJaxProcess``), to be assembled with
``wsol_jax.sharding.global_batch``.

Training batches (B = local batch size, h x w = image_size):
  'image'  uint8 (B, h, w, 3)   resize to resize_size (PIL bilinear, aspect not
                                kept) -> random crop -> random horizontal flip
  'label'  int32 (B,)
  'boxes'  int32 (B, G, 4)      only with cfg_data.train_boxes (moved with the
                                crop/flip, clipped, -1 padded)
Endless unless ``num_epochs`` is set (each epoch reshuffled); the last partial
batch of a finite run is dropped. Same seed -> same order, crops and flips
(for a fixed worker_count: workers batch their own slices).

Evaluation batches (H' x W' = image_size; every image exactly once, in source
order when worker_count=0, interleaved by worker otherwise; use 'index'):
  'image'     uint8 (B, H', W', 3)  resized straight to image_size, no crop
  'label'     int32 (B,)
  'boxes'     int32 (B, G, 4)  wsolevaluation resize_bbox (floor), -1 padded
  'mask'      uint8 (B, H', W') 1 object / 255 ignore / 0 background, cv2
              INTER_NEAREST; only for datasets with masks
  'orig_size' int32 (B, 2)     original (H, W)
  'index'     int32 (B,)       position in the source (-1 on filler rows)
  'valid'     bool (B,)        False on filler rows that pad the last batch(es)
                               to full size, and on unreadable images
Shapes are static: the split is padded to a multiple of
``batch_size * max(worker_count, 1)`` rows.

Unreadable images: training drops them, evaluation marks them valid=False.
Either way they are counted: ``iterator.num_skipped`` (and
``EvalIterator.skipped_indices``), with a log warning whenever it grows.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import grain.python as grain
import jax
import numpy as np

from wsol_jax.data import config as config_lib
from wsol_jax.data import records, sources, transforms
from wsol_jax.data.sources import DatasetInfo, dataset_info, make_source  # re-exported

log = logging.getLogger("wsol_jax.data")  # console and train.log

__all__ = ["DatasetInfo", "EvalIterator", "TrainIterator", "build_eval_iterator",
           "build_train_iterator", "dataset_info", "eval_loader", "local_batch_size",
           "make_source", "train_loader"]


def local_batch_size(global_batch_size: int) -> int:
  """This process's rows of a global batch; checks divisibility by the devices."""
  n_dev, n_proc = jax.device_count(), jax.process_count()
  if global_batch_size <= 0 or global_batch_size % n_dev:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of "
                     f"the {n_dev} devices (jax.device_count()); e.g. "
                     f"{max(n_dev, global_batch_size // n_dev * n_dev)}")
  return global_batch_size // n_proc


def _read_options(read_threads: int, read_prefetch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(read_threads), prefetch_buffer_size=int(read_prefetch))


def train_loader(source: sources.Source, *, batch_size: int, seed: int,
                 image_size: int | tuple[int, int] = 224,
                 resize_size: int | tuple[int, int] = 256, random_flip: bool = True,
                 max_boxes: int = 0, num_epochs: int | None = None, worker_count: int = 0,
                 worker_buffer_size: int = 2, read_threads: int = 8,
                 read_prefetch: int = 128, max_consecutive_unreadable: int = 0,
                 split: str = "") -> grain.DataLoader:
  """The training DataLoader over ``source`` (batch_size is GLOBAL).

  Args:
    max_boxes: > 0 adds padded 'boxes' (B, max_boxes, 4) to the batches.
    num_epochs: None repeats forever.
    max_consecutive_unreadable: > 0: ``records.UnreadableDataError`` (naming ``split`` and
      a few files) when this many records in a row cannot be read.
  """
  if len(source) == 0:
    raise ValueError(f"training source {source!r} is empty")
  if not 0 <= int(seed) < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  local = local_batch_size(batch_size)
  sampler = grain.IndexSampler(num_records=len(source), shard_options=grain.NoSharding(),
                               shuffle=True, num_epochs=num_epochs, seed=int(seed))
  operations = [
      transforms.TrainAugment(config_lib.hw(resize_size), config_lib.hw(image_size), random_flip),
      transforms.CountSkipped(max_consecutive_unreadable, split),
      transforms.DropErrors(),
      transforms.TrainRow(max_boxes),
      grain.Batch(local, drop_remainder=True),
  ]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=int(worker_count),
                          worker_buffer_size=int(worker_buffer_size),
                          shard_options=grain.ShardByJaxProcess(drop_remainder=True),
                          read_options=_read_options(read_threads, read_prefetch))


class _PaddedSource:
  """``source`` followed by filler records up to ``length`` (static eval shapes)."""

  def __init__(self, source: sources.Source, length: int):
    self.source = source
    self.length = int(length)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> records.Record:
    index = int(index)
    if index < len(self.source):
      return self.source[index]
    return records.error_record(index=-1, image_id="", error=transforms.PADDING_ERROR,
                                has_mask=self.source.has_masks)

  def __repr__(self) -> str:
    return f"_PaddedSource({self.source!r}, length={self.length})"


def eval_loader(source: sources.Source, *, batch_size: int,
                image_size: int | tuple[int, int] = 224, max_boxes: int = 1,
                worker_count: int = 0, worker_buffer_size: int = 2, read_threads: int = 8,
                read_prefetch: int = 128) -> tuple[grain.DataLoader, int]:
  """The evaluation DataLoader over ``source`` (batch_size is GLOBAL).

  Returns:
    (loader, number of local batches).
  """
  if len(source) == 0:
    raise ValueError(f"evaluation source {source!r} is empty")
  local = local_batch_size(batch_size)
  # Each worker batches its own slice of this process's rows: pad so that every
  # worker of every process gets whole batches.
  unit = batch_size * max(int(worker_count), 1)
  length = math.ceil(len(source) / unit) * unit
  padded = _PaddedSource(source, length)
  sampler = grain.IndexSampler(num_records=length, shard_options=grain.NoSharding(),
                               shuffle=False, num_epochs=1, seed=0)
  operations = [
      transforms.EvalRow(config_lib.hw(image_size), max_boxes, source.has_masks),
      grain.Batch(local, drop_remainder=False),
  ]
  loader = grain.DataLoader(data_source=padded, sampler=sampler, operations=operations,
                            worker_count=int(worker_count),
                            worker_buffer_size=int(worker_buffer_size),
                            shard_options=grain.ShardByJaxProcess(drop_remainder=True),
                            read_options=_read_options(read_threads, read_prefetch))
  return loader, length // jax.process_count() // local


class TrainIterator:
  """Endless (or ``num_epochs``) iterator of training batches with checkpointable state.

  Attributes:
    num_skipped: unreadable images dropped so far (since construction; not part
      of the saved state).
    info: ``DatasetInfo`` of the dataset (also ``num_classes``, ``class_names``).
    batch_size: the global batch size.
  """

  def __init__(self, loader: grain.DataLoader, info: DatasetInfo, source: sources.Source,
               batch_size: int):
    self._loader = loader
    self._it = iter(loader)
    self.info = info
    self.source = source
    self.batch_size = int(batch_size)
    self.num_skipped = 0

  @property
  def steps_per_epoch(self) -> int:
    """Global batches per pass over the training split (len(source) // batch_size)."""
    return len(self.source) // self.batch_size

  @property
  def num_classes(self) -> int:
    return self.info.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.info.class_names

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._it))
    skipped = int(np.sum(batch.pop("_skipped")))
    if skipped:
      before, self.num_skipped = self.num_skipped, self.num_skipped + skipped
      # Aggregated: one line when the count first reaches 1, 2, 4, 8, ... (each image is
      # also named once by its source).
      if before == 0 or before.bit_length() < self.num_skipped.bit_length():
        log.warning("training data: %d unreadable image(s) skipped so far in %r",
                    self.num_skipped, self.source)
    return batch

  def get_state(self) -> bytes:
    """grain DataLoader iterator state (JSON bytes) after the last returned batch."""
    return self._it.get_state()

  def set_state(self, state: bytes) -> None:
    """Resumes from ``get_state()`` output (same config, seed, batch size, workers)."""
    self._it.set_state(state)

  def start_prefetch(self) -> None:
    """Starts worker prefetching early (called by grain's orbax checkpoint handler)."""
    self._it.start_prefetch()

  def close(self) -> None:
    close = getattr(self._it, "close", None)
    if close is not None:
      close()


class EvalIterator:
  """One ordered pass over an evaluation split per ``iter()``; ``len()`` = batches.

  Attributes:
    num_examples: images in the split (valid rows if none is unreadable).
    num_skipped: unreadable images in the last pass (valid=False rows).
    skipped_indices: their source indices.
    info: ``DatasetInfo``.
  """

  def __init__(self, loader: grain.DataLoader, num_batches: int, info: DatasetInfo,
               source: sources.Source):
    self._loader = loader
    self._num_batches = num_batches
    self.info = info
    self.source = source
    self.num_examples = len(source)
    self.num_skipped = 0
    self.skipped_indices: list[int] = []

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    self.num_skipped = 0
    self.skipped_indices = []
    for batch in self._loader:
      batch = dict(batch)
      errors = np.asarray(batch.pop("_error"))
      if errors.any():
        new = [int(i) for i in np.asarray(batch["index"])[errors]]
        self.skipped_indices.extend(new)
        self.num_skipped += len(new)
      yield batch
    if self.num_skipped:  # one line per pass
      shown = self.skipped_indices[:5]
      log.warning("evaluation data: %d unreadable image(s) marked invalid in %r: indices %s%s",
                  self.num_skipped, self.source, shown,
                  " ..." if self.num_skipped > len(shown) else "")


def _loader_kwargs(cfg: Any) -> dict[str, Any]:
  return dict(worker_count=int(cfg.worker_count),
              worker_buffer_size=int(cfg.worker_buffer_size),
              read_threads=int(cfg.read_threads),
              read_prefetch=int(cfg.read_prefetch))


def check_readable(source: sources.Source, split: str, limit: int) -> None:
  """Raises ``records.UnreadableDataError`` (naming ``split`` and a few files) when none of
  the first ``limit`` records of ``source`` can be read: a split without a readable image
  would otherwise keep the training loop waiting forever."""
  failed = []
  for index in range(min(len(source), limit) if limit > 0 else 0):
    record = source[index]
    if not record["error"]:
      return
    failed.append(record)
  if failed:
    what = "any" if len(failed) == len(source) else f"the first {len(failed)}"
    raise records.UnreadableDataError(
        f"training split {split!r}: none of {what} of its {len(source)} images can be read, "
        f"e.g. " + records.describe_errors(failed))


def build_train_iterator(cfg_data: Any, batch_size: int, seed: int) -> TrainIterator:
  """Training iterator for ``cfg_data`` (global ``batch_size``; see module docstring)."""
  split = config_lib.resolve_split(cfg_data, "train")
  source = make_source(cfg_data, split)
  info = dataset_info(cfg_data, source)
  limit = int(cfg_data.max_consecutive_unreadable)
  check_readable(source, split, limit)
  num_epochs = int(cfg_data.num_epochs) or None
  loader = train_loader(
      source, batch_size=batch_size, seed=seed, image_size=cfg_data.image_size,
      resize_size=cfg_data.resize_size, random_flip=bool(cfg_data.random_flip),
      max_boxes=info.max_boxes if cfg_data.train_boxes else 0,
      num_epochs=num_epochs, max_consecutive_unreadable=limit, split=split,
      **_loader_kwargs(cfg_data))
  return TrainIterator(loader, info, source, batch_size)


def build_eval_iterator(cfg_data: Any, split: str, batch_size: int) -> EvalIterator:
  """Evaluation iterator over ``split`` ('val', 'test' or any split name).

  'train' / 'val' / 'test' are mapped through the config's ``*_split`` fields;
  other names ('test[:100]') are used as they are.
  """
  if split in ("train", "val", "test"):
    resolved = config_lib.resolve_split(cfg_data, split)
    if not resolved:
      # VOC 2012's test split is its 'val' list: the name then means the test role.
      roles = [r for r in ("train", "test") if cfg_data[f"{r}_split"] == split]
      hint = (f" ({split!r} is this config's {roles[0]} split: ask for {roles[0]!r})"
              if roles else "")
      raise ValueError(f"dataset {cfg_data.name!r} has no {split!r} split; set "
                       f"cfg_data.{split}_split{hint}")
    split = resolved
  source = make_source(cfg_data, split)
  info = dataset_info(cfg_data, source)
  loader, num_batches = eval_loader(source, batch_size=batch_size,
                                    image_size=cfg_data.image_size, max_boxes=info.max_boxes,
                                    **_loader_kwargs(cfg_data))
  return EvalIterator(loader, num_batches, info, source)
