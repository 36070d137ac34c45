"""Pretrained model directories: an Orbax checkpoint of the variables plus JSON metadata.

Layout of a directory written by ``weights_convert`` (or exported by the trainer)::

    DIR/wsol_model.json   model name, family, constructor kwargs, num_classes,
                          mean/std, method, source (file, sha256, format)
    DIR/variables/        Orbax checkpoint of {'params': ..., ['batch_stats': ...]}

DIR may be a ``gs://`` URL (``wsol_jax.files``). Local writes are atomic: everything goes
to a sibling temporary directory that is renamed into place only when complete, so a
failure never leaves a partial DIR (on object storage, see ``save_pretrained``).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from wsol_jax.models import registry

META_FILE = "wsol_model.json"
VARIABLES_DIR = "variables"


def save_pretrained(out_dir: str | os.PathLike, variables: dict[str, Any], meta: dict[str, Any],
                    overwrite: bool = False) -> epath.Path:
  """Writes ``variables`` and ``meta`` to ``out_dir`` (a path or a ``gs://`` URL); returns
  the path.

  Locally the write is atomic (a sibling temporary directory renamed into place). Object
  storage has no directory rename: the old ``wsol_model.json`` is deleted first and the new
  one written last, so a directory left half-written by a failure is no model directory
  (``read_meta`` refuses it; ``checkpoint.load_variables`` falls back to the checkpoints).
  """
  from wsol_jax import files
  out = files.as_path(out_dir)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
  if not files.is_local(out):
    if (out / META_FILE).exists():
      (out / META_FILE).unlink()
    if (out / VARIABLES_DIR).exists():
      (out / VARIABLES_DIR).rmtree()
    _save_variables(out / VARIABLES_DIR, variables)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
  local = pathlib.Path(out)
  local.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_temporaries(local)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{local.name}.tmp-{os.getpid()}-", dir=local.parent))
  try:
    _save_variables(tmp / VARIABLES_DIR, variables)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if local.exists():
      old = local.with_name(f".{local.name}.old-{os.getpid()}")
      os.replace(local, old)
      os.replace(tmp, local)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, local)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _save_variables(directory: os.PathLike, variables: dict[str, Any]) -> None:
  """An Orbax checkpoint of ``variables`` written by this process alone (a multi-process
  trainer exports from process 0)."""
  me = jax.process_index()
  ckptr = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"export{me}"))
  ckptr.save(epath.Path(directory), jax.tree_util.tree_map(np.asarray, variables))
  ckptr.wait_until_finished()


def _remove_stale_temporaries(out: pathlib.Path) -> None:
  """Removes ``.NAME.tmp-<pid>-*`` directories that a killed writer of ``out`` left (its
  process is gone); another live writer's are kept."""
  for tmp in out.parent.glob(f".{out.name}.tmp-*"):
    pid = tmp.name[len(f".{out.name}.tmp-"):].split("-")[0]
    if not pid.isdigit() or not tmp.is_dir():
      continue
    try:
      os.kill(int(pid), 0)
    except ProcessLookupError:
      shutil.rmtree(tmp, ignore_errors=True)
    except PermissionError:  # alive, another user's process
      pass


def read_meta(model_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads ``wsol_model.json`` with a clear error when the directory is not a model."""
  from wsol_jax import files
  path = files.as_path(model_dir) / META_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{model_dir} is not a wsol_jax model directory: {META_FILE} is missing "
        "(create one with `python -m weights_convert.timm ...`)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def load_pretrained(model_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns ``(variables, meta)`` of a pretrained directory (numpy arrays)."""
  meta = read_meta(model_dir)
  from wsol_jax import files
  var_dir = files.as_path(model_dir) / VARIABLES_DIR
  if not var_dir.is_dir():
    raise FileNotFoundError(f"{var_dir} is missing: the model directory is incomplete")
  try:
    variables = ocp.StandardCheckpointer().restore(var_dir)
  except Exception as e:  # orbax raises many types for damaged files
    raise ValueError(f"cannot read the Orbax checkpoint in {var_dir}: {e}") from e
  return jax.tree_util.tree_map(np.asarray, variables), meta


class WeightsMismatch(ValueError):
  """Weights do not fit a model; the message lists every missing, unexpected and mis-shaped key."""

  def __init__(self, missing: Sequence[tuple[str, tuple[int, ...]]],
               unexpected: Sequence[tuple[str, tuple[int, ...]]],
               mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]],
               what: str = "the weights do not fit the model", hint: str = ""):
    self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
    lines = [f"{what}:"]
    lines += [f"  missing    {k} {s}" for k, s in self.missing]
    lines += [f"  unexpected {k} {s}" for k, s in self.unexpected]
    lines += [f"  shape      {k}: checkpoint {a} vs model {b}" for k, a, b in self.mismatched]
    if hint:
      lines.append(hint)
    super().__init__("\n".join(lines))


def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """``'a/b/c' -> shape`` of every leaf of a nested dict of arrays (or ShapeDtypeStructs)."""
  return {"/".join(map(str, k)): tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(
      dict(tree)).items()}


def compare(got: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]]
            ) -> tuple[list, list, list]:
  """``(missing, unexpected, mismatched)`` of weight shapes ``got`` against a model's ``want``
  (the one rule behind ``check_fit``, ``methods.base.load_into`` and ``weights_convert``)."""
  missing = [(k, want[k]) for k in sorted(set(want) - set(got))]
  unexpected = [(k, got[k]) for k in sorted(set(got) - set(want))]
  mismatched = [(k, got[k], want[k]) for k in sorted(set(got) & set(want)) if got[k] != want[k]]
  return missing, unexpected, mismatched


def check_fit(variables: Any, expected: Any, what: str = "the checkpoint does not fit the "
              "configured model") -> None:
  """Raises ``WeightsMismatch`` unless ``variables`` has exactly ``expected``'s keys and shapes."""
  problems = compare(shapes(variables), shapes(expected))
  if any(problems):
    raise WeightsMismatch(*problems, what=what)


def model_from_meta(meta: dict[str, Any], **overrides: Any) -> nn.Module:
  """Rebuilds the Flax module described by a metadata dict (``overrides`` replace kwargs)."""
  kwargs = dict(meta["kwargs"])
  kwargs.update(overrides)
  return registry.build_from_kwargs(meta["family"], kwargs)


def abstract_variables(model: nn.Module, image_size: int) -> dict[str, Any]:
  """Shapes/dtypes of ``model``'s variables, without allocating them."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
