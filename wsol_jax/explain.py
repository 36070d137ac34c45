"""Explain images with a model directory: raw maps, heatmap overlays and boxes.

    python -m wsol_jax.explain --checkpoint DIR --kind gar --images a.jpg b.png ... --out OUT
        [--target CLASS] [--batch-size N] [--threshold 0.2] [--cpu-tuning auto]
        [--maps-memory-mb 0]

DIR is a model directory (``wsol_model.json`` + ``variables/``, written by
``weights_convert`` or the trainer). DIR, OUT and the images may be ``gs://`` URLs. ``--kind`` is a map kind of ``wsol_jax.maps.KINDS``
(``--method`` is an alias); the default is the first map kind of the directory's method,
else the model family's (``maps.compute.default_kind``). Images are read with PIL (-> RGB), resized to the
model's input size (PIL bilinear, as the official test transforms) and normalised with
the model's mean/std; maps are computed in jit-compiled batches (the last batch is
padded, so it compiles once), in chunks where a batch needs more than
``--maps-memory-mb`` per device (``wsol_jax.maps.budget``; 0 = automatic). Per image OUT gets:

* ``<name>.npy``: the raw map (h, w) float32 on the feature grid;
* ``<name>.png``: the heatmap (upsampled to the ORIGINAL image size with the method's
  official interpolation, min-max normalised) over the original image, with the
  wsolevaluation box at ``--threshold``;

and ``summary.csv`` (name, source path, size, explained class, predicted class, box).
Unreadable images are reported on stderr and skipped; the exit code is 0 when at
least one image was explained.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import pathlib
import sys
from typing import Any, Callable, Iterator, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image

from wsol_jax import files, viz
from wsol_jax.maps import budget, postprocess
# Names from the submodule: the package binds ``compute`` to the function.
from wsol_jax.maps.compute import KINDS, compute, default_kind, jitted, upsample_method
from wsol_jax.models import pretrained
from wsol_jax.runtime import Runtime

SUMMARY_FIELDS = ("name", "path", "width", "height", "target", "predicted", "x0", "y0", "x1", "y1")


@dataclasses.dataclass
class LoadedImage:
  """An image read from disk: its output name, the original pixels and the model input."""
  name: str
  path: str
  original: np.ndarray  # (H, W, 3) uint8 RGB
  resized: np.ndarray  # (S, S, 3) uint8 RGB


@dataclasses.dataclass
class Explainer:
  """A loaded model and its jitted map function ``fn(variables, uint8 images, targets)``."""
  meta: dict[str, Any]
  variables: Any
  kind: str
  image_size: int
  fn: Callable[..., tuple[jax.Array, jax.Array]]


def kind_for(meta: dict[str, Any], model: Any) -> str:
  """The map kind of a model directory when ``--kind`` is not given: the first map kind of
  its method (the methods registry), else the model family's default (the maps registry)."""
  from wsol_jax import methods
  if meta.get("method") in methods.METHODS:
    return methods.method_class(meta["method"]).map_kinds[0]
  return default_kind(model)


def build_explainer(model_dir: str | os.PathLike, kind: str | None = None,
                    runtime: Runtime | None = None, memory_mb: float = 0) -> Explainer:
  """Loads a model directory and compiles ``kind``'s maps (uint8 NHWC in, raw maps out).

  ``runtime``: the injected implementations (``wsol_jax.cpu.install``); default plain XLA.
  ``memory_mb``: the per-device memory budget of the maps (``budget.Budgeted``; 0 = automatic).
  """
  variables, meta = pretrained.load_pretrained(model_dir)
  runtime = runtime if runtime is not None else Runtime()
  from wsol_jax.models import registry
  model = pretrained.model_from_meta(
      meta, **runtime.model_overrides(registry.family_class(meta["family"])))
  kind = kind or kind_for(meta, model)
  mean, std = meta["mean"], meta["std"]
  jitted(model, (kind,))  # validates the kind against the model (compiles nothing)

  def fn(v: Any, images: jax.Array, targets: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    out, logits = compute(model, v, postprocess.normalize_images(images, mean, std), (kind,),
                          targets)
    return out[kind], logits

  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  size = int(meta.get("image_size") or meta["kwargs"].get("img_size", 224))
  return Explainer(meta, variables, kind, size, budget.Budgeted(fn, memory_mb))


def load_image(path: str | os.PathLike, size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(original (H, W, 3), resized (size, size, 3))`` uint8 RGB of an image file (a path
  or a ``gs://`` URL); raises OSError/ValueError."""
  with files.as_path(path).open("rb") as f, Image.open(f) as img:
    rgb = img.convert("RGB")
  return np.asarray(rgb), np.asarray(rgb.resize((size, size), Image.BILINEAR))


def output_names(paths: Sequence[str]) -> list[str]:
  """File stems, made unique with ``_1``, ``_2``, ... suffixes."""
  seen: dict[str, int] = {}
  names = []
  for p in paths:
    stem = pathlib.Path(p).stem or "image"
    name, k = stem, 0
    while name in seen:
      k += 1
      name = f"{stem}_{k}"
    seen[name] = 1
    names.append(name)
  return names


def iter_batches(paths: Sequence[str], size: int, batch_size: int, err: TextIO,
                 progress: tqdm.tqdm | None = None) -> Iterator[list[LoadedImage]]:
  """Readable images in batches of ``batch_size`` (the last may be shorter)."""
  batch: list[LoadedImage] = []
  for path, name in zip(paths, output_names(paths)):
    try:
      original, resized = load_image(path, size)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      print(f"skipping {path}: cannot read the image ({e})", file=err)
      if progress is not None:
        progress.update(1)
      continue
    batch.append(LoadedImage(name, str(path), original, resized))
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


def _submit(explainer: Explainer, batch: list[LoadedImage], batch_size: int,
            target: int | None) -> tuple[jax.Array, jax.Array]:
  """Dispatches one padded batch (asynchronously); returns (raw maps, logits) futures."""
  images = np.zeros((batch_size, explainer.image_size, explainer.image_size, 3), np.uint8)
  images[:len(batch)] = np.stack([im.resized for im in batch])
  targets = None if target is None else jnp.full((batch_size,), target, jnp.int32)
  return explainer.fn(explainer.variables, images, targets)


def _write(explainer: Explainer, batch: list[LoadedImage], raw: jax.Array, logits: jax.Array,
           out_dir: os.PathLike, target: int | None, threshold: float) -> list[dict[str, Any]]:
  raw = np.asarray(raw)
  predicted = np.argmax(np.asarray(logits), axis=-1)
  method = upsample_method(explainer.kind)
  rows = []
  for i, im in enumerate(batch):
    files.save_npy(out_dir / f"{im.name}.npy", raw[i].astype(np.float32))
    picture, _, box = viz.overlay(im.original, raw[i], method, threshold)
    files.save_png(out_dir / f"{im.name}.png", picture)
    h, w = im.original.shape[:2]
    rows.append(dict(zip(SUMMARY_FIELDS, (im.name, im.path, w, h,
                                          int(predicted[i]) if target is None else target,
                                          int(predicted[i]), *map(int, box)))))
  return rows


def explain(explainer: Explainer, paths: Sequence[str], out_dir: str | os.PathLike, *,
            target: int | None = None, batch_size: int = 16, threshold: float = 0.2,
            err: TextIO | None = None) -> int:
  """Writes maps, overlays and ``summary.csv`` for ``paths``; returns the number explained.

  Unreadable images are reported on ``err`` (default: stderr) and skipped.
  """
  err = sys.stderr if err is None else err
  num_classes = int(explainer.meta["num_classes"])
  if target is not None and not 0 <= target < num_classes:
    raise ValueError(f"--target {target} is not a class of this model (0..{num_classes - 1})")
  out_dir = files.as_path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  batch_size = max(1, min(batch_size, len(paths)))
  rows: list[dict[str, Any]] = []
  pending = None
  with tqdm.tqdm(total=len(paths), unit="img", file=err, disable=None) as progress:
    for batch in iter_batches(paths, explainer.image_size, batch_size, err, progress):
      submitted = (batch, *_submit(explainer, batch, batch_size, target))
      if pending is not None:  # host work of the previous batch overlaps this batch's compute
        rows += _write(explainer, *pending, out_dir, target, threshold)
        progress.update(len(pending[0]))
      pending = submitted
    if pending is not None:
      rows += _write(explainer, *pending, out_dir, target, threshold)
      progress.update(len(pending[0]))
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=SUMMARY_FIELDS)
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(out_dir / "summary.csv", table.getvalue())
  return len(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m wsol_jax.explain", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="model directory (wsol_model.json + variables/)")
  parser.add_argument("--kind", "--method", dest="kind", choices=sorted(KINDS),
                      help="map kind (default: the directory's method's first kind, else the "
                           "model family's: gar for ViTs, cam for ResNets)")
  parser.add_argument("--images", nargs="+", required=True, help="image files")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--target", type=int, help="class to explain for every image (default: argmax)")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--threshold", type=float, default=0.2, help="score threshold of the box")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype of the model (as config.model.dtype; LRP runs in float32)")
  from wsol_jax import cpu
  parser.add_argument("--cpu-tuning", choices=cpu.SETTINGS, default="auto",
                      help="XLA:CPU tuning (wsol_jax.cpu; as config.cpu_tuning)")
  parser.add_argument("--maps-memory-mb", type=float, default=0.0,
                      help="per-device memory budget of the maps in MiB (0 = automatic); a batch "
                           "that needs more is computed in chunks (as config.eval.maps_memory_mb)")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error("--batch-size must be >= 1")
  if args.maps_memory_mb < 0:
    parser.error(f"--maps-memory-mb must be >= 0 (0 = automatic), got {args.maps_memory_mb}")
  if not 0.0 <= args.threshold <= 1.0:
    parser.error(f"--threshold is a score-map threshold in [0, 1], got {args.threshold}")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  from wsol_jax import config_lib, cpu
  try:
    runtime = cpu.install(argparse.Namespace(cpu_tuning=args.cpu_tuning))  # before any backend
    runtime = runtime.for_model(argparse.Namespace(dtype=args.dtype, param_dtype="float32",
                                                   fused_attn=True))
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(runtime.summary(), file=sys.stderr, flush=True)
  try:
    explainer = build_explainer(args.checkpoint, args.kind, runtime, args.maps_memory_mb)
    done = explain(explainer, args.images, args.out, target=args.target,
                   batch_size=args.batch_size, threshold=args.threshold)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"explained {done} of {len(args.images)} images with {explainer.kind!r} -> {args.out}",
        file=sys.stderr)
  return 0 if done else 1


if __name__ == "__main__":
  sys.exit(main())
