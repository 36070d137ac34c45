"""Training checkpoints in a workdir (Orbax ``CheckpointManager``).

``WORKDIR/checkpoints/<step>/``  the full training state (params, optimizer state,
                                 model state, step, RNG) and the data iterator's state;
                                 periodic, keep-last-k, used to resume.
``WORKDIR/best/<step>/``         the best variables by the validation metric (one kept),
                                 with the metrics that selected it.
``WORKDIR/export/``              the selected model as a model directory
                                 (``wsol_model.json`` + ``variables/``) for evaluate/explain.

Orbax writes each step to a temporary directory and renames it when complete, so an
interrupted save (SIGKILL, preemption) never leaves a half-written checkpoint that a
restart would read. A checkpoint damaged afterwards (truncated or emptied files, a deleted
item, bad JSON) is not fatal: ``restore_newest`` and ``restore_best`` say so in one line
(path and cause), move it to ``WORKDIR/unrestorable/<checkpoints|best>/<step>`` (nothing is
deleted) and fall back to the newest checkpoint that restores.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from wsol_jax import files

log = logging.getLogger("wsol_jax.checkpoint")
UNRESTORABLE = "unrestorable"


class CheckpointError(RuntimeError):
  """No checkpoint of a run can be restored; the message names each one and its cause."""


def cause(error: BaseException) -> str:
  """One line for a restore failure: the error type and the first line of its message."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Checkpointer:
  """Latest/best checkpoints of one training run."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, select_mode: str = "max"):
    self.workdir = files.as_path(workdir)
    self.latest = self._open("checkpoints", ocp.CheckpointManagerOptions(
        max_to_keep=max(int(keep), 1), create=True, cleanup_tmp_directories=True),
        ("state", "data"))
    self.best = self._open("best", ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, cleanup_tmp_directories=True,
        best_fn=lambda m: float(m["selection"]), best_mode=select_mode,
        keep_checkpoints_without_metrics=False), ("variables", "metrics"))

  def _open(self, kind: str, options: ocp.CheckpointManagerOptions,
            item_names: tuple[str, ...]) -> ocp.CheckpointManager:
    """The manager of ``WORKDIR/<kind>``. Orbax reads every step's JSON metadata (and, for
    ``best``, its metrics) when it opens the directory; a step whose JSON does not parse is
    set aside with a warning, and the directory opened again."""
    directory = self.workdir / kind
    try:
      return ocp.CheckpointManager(directory, options=options, item_names=item_names)
    except Exception as first:  # noqa: BLE001
      damaged = {d: _bad_json(d) for d in sorted(directory.iterdir()) if d.name.isdigit()}
      damaged = {d: why for d, why in damaged.items() if why}
      if not damaged:
        raise CheckpointError(f"cannot open the checkpoints in {directory}: {cause(first)}"
                              ) from first
      for d, why in damaged.items():
        aside = self._move_aside(kind, int(d.name))
        log.warning("checkpoint %s cannot be read (%s); moved to %s", d, why, aside)
      return ocp.CheckpointManager(directory, options=options, item_names=item_names)

  # -- latest ---------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any | None = None, wait: bool = False) -> None:
    """Saves the training state (and the data iterator's ``get_state()``) at ``step``."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = ocp.args.JsonSave(_all_process_states(data_iterator.get_state()))
    self.latest.save(step, args=ocp.args.Composite(**items), force=True)
    if wait:
      self.latest.wait_until_finished()

  def restore_newest(self, abstract_state: Any, data_iterator: Any | None = None
                     ) -> tuple[Any, int] | None:
    """The newest training state that restores and its step (None when there is none).

    Every newer checkpoint that does not restore is reported in one warning line and set
    aside (``set_aside``). Raises ``CheckpointError`` when checkpoints exist but none
    restores.
    """
    failures = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        return self.restore(abstract_state, data_iterator, step), step
      except Exception as e:  # noqa: BLE001 (Orbax and TensorStore raise many types)
        path = self.workdir / "checkpoints" / str(step)
        aside = self.set_aside(self.latest, "checkpoints", step)
        log.warning("checkpoint %s cannot be restored (%s); moved to %s, trying the previous "
                    "one", path, cause(e), aside)
        failures.append(f"{path}: {cause(e)}")
    if failures:
      raise CheckpointError("no checkpoint of this run can be restored (each was moved to "
                            f"{self.workdir / UNRESTORABLE}):\n  " + "\n  ".join(failures))
    return None

  def set_aside(self, manager: ocp.CheckpointManager, kind: str, step: int) -> epath.Path:
    """Moves ``WORKDIR/<kind>/<step>`` aside (``_move_aside``) and reloads the manager's
    list of steps."""
    target = self._move_aside(kind, step)
    manager.reload()
    return target

  def _move_aside(self, kind: str, step: int) -> epath.Path:
    """Moves ``WORKDIR/<kind>/<step>`` to ``WORKDIR/unrestorable/<kind>/<step>[-<time>]``
    (process 0; every process waits for it); returns the new path."""
    source = self.workdir / kind / str(step)
    target = self.workdir / UNRESTORABLE / kind / str(step)
    if target.exists():
      target = target.with_name(f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0 and source.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      files.move_tree(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"wsol_jax_set_aside_{kind}_{step}")
    return target

  def restore(self, abstract_state: Any, data_iterator: Any | None = None,
              step: int | None = None) -> Any:
    """Restores the state at ``step`` (default: latest) into the shapes/shardings given."""
    step = self.latest.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      if not _has_item(self.latest, step, "data"):
        raise FileNotFoundError(f"checkpoint {step} in {self.latest.directory} has no data "
                                "iterator state; cannot resume the input pipeline exactly")
      items["data"] = ocp.args.JsonRestore()
    restored = self.latest.restore(step, args=ocp.args.Composite(**items))
    if data_iterator is not None:
      data_iterator.set_state(_decode_iterator_state(_this_process_state(restored["data"], step)))
    return restored["state"]

  # -- best -----------------------------------------------------------------------------------
  def save_best(self, step: int, variables: Any, metrics: dict[str, float], selection: float) -> bool:
    """Offers ``variables`` as best; keeps them only if ``selection`` beats the kept one."""
    metrics = {k: float(v) for k, v in metrics.items()} | {"selection": float(selection)}
    kept = self.best_metrics()
    if kept is not None:
      better = selection > kept["selection"] if self.best._options.best_mode == "max" else (
          selection < kept["selection"])
      if not better:
        return False
    self.best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), metrics=ocp.args.JsonSave(metrics)),
        metrics=metrics, force=True)
    self.best.wait_until_finished()
    return True

  def best_metrics(self) -> dict[str, float] | None:
    """The kept best checkpoint's metrics (None when there is none or it cannot be read:
    then it is set aside with a warning)."""
    step = self.best.best_step()
    if step is None:
      return None
    try:
      return dict(self.best.restore(step, args=ocp.args.Composite(
          metrics=ocp.args.JsonRestore()))["metrics"])
    except Exception as e:  # noqa: BLE001
      self._best_unrestorable(step, e)
      return None

  def restore_best(self, abstract_variables: Any) -> tuple[Any, int] | None:
    """The best variables and their step; None when there is none or they cannot be
    restored (then they are set aside with a warning and the caller uses the last state)."""
    step = self.best.best_step()
    if step is None:
      return None
    try:
      out = self.best.restore(step, args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(abstract_variables)))
    except Exception as e:  # noqa: BLE001
      self._best_unrestorable(step, e)
      return None
    return out["variables"], step

  def _best_unrestorable(self, step: int, error: BaseException) -> None:
    path = self.workdir / "best" / str(step)
    aside = self.set_aside(self.best, "best", step)
    log.warning("best checkpoint %s cannot be restored (%s); moved to %s, selection starts "
                "again", path, cause(error), aside)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _bad_json(step_dir: epath.Path) -> str | None:
  """Why a JSON file of a step's metadata or metrics does not parse (None when all do)."""
  for path in (step_dir / "_CHECKPOINT_METADATA", step_dir / "metrics" / "metrics"):
    if path.is_file():
      try:
        json.loads(path.read_text())
      except (ValueError, UnicodeDecodeError) as e:
        return f"{path.name}: {cause(e)}"
  return None


def _has_item(manager: ocp.CheckpointManager, step: int, item: str) -> bool:
  return (epath.Path(manager.directory) / str(step) / item).exists()


def _encode_iterator_state(state: Any) -> Any:
  """grain iterator states are JSON bytes; Orbax stores JSON objects."""
  if isinstance(state, (bytes, bytearray)):
    return {"json_bytes": json.loads(state.decode("utf-8"))}
  return {"json": state}


def _all_process_states(state: Any) -> dict[str, Any]:
  """This process's encoded iterator state; with several processes, every process's (each
  reads its own shard of the data), gathered so that the primary process writes them all."""
  encoded = _encode_iterator_state(state)
  if jax.process_count() == 1:
    return encoded
  from jax.experimental import multihost_utils
  blob = np.frombuffer(json.dumps(encoded).encode("utf-8"), np.uint8)
  longest = int(np.max(multihost_utils.process_allgather(np.array([blob.size]))))
  padded = np.zeros(longest, np.uint8)
  padded[:blob.size] = blob
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), -1)
  return {"processes": [json.loads(bytes(r).rstrip(b"\0").decode("utf-8")) for r in rows]}


def _this_process_state(saved: dict[str, Any], step: int) -> dict[str, Any]:
  if "processes" not in saved:
    if jax.process_count() > 1:
      raise ValueError(f"checkpoint {step} holds one process's data iterator state; it cannot "
                       f"resume a run with {jax.process_count()} processes")
    return saved
  states = saved["processes"]
  if len(states) != jax.process_count():
    raise ValueError(f"checkpoint {step} was written by {len(states)} processes; resume it with "
                     f"{len(states)} processes, not {jax.process_count()}")
  return states[jax.process_index()]


def _decode_iterator_state(saved: dict[str, Any]) -> Any:
  if "json_bytes" in saved:
    return json.dumps(saved["json_bytes"]).encode("utf-8")
  return saved["json"]


def to_numpy_tree(tree: Any) -> Any:
  return jax.tree_util.tree_map(np.asarray, tree)


write_json = files.write_json


def load_variables(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
  """Variables to evaluate from a model directory or a training workdir.

  Accepts (in this order) a model directory (``wsol_model.json``: ``weights_convert``
  output or a trainer export), a workdir's ``export/``, or a workdir's newest training
  checkpoint that restores (also when the export is damaged: with a warning naming it).
  Returns ``(variables, meta or None, description)``.
  """
  from wsol_jax.models import pretrained
  path = files.as_path(path)
  manager_dir = path / "checkpoints"
  for candidate in (path, path / "export"):
    if (candidate / pretrained.META_FILE).is_file():
      try:
        variables, meta = pretrained.load_pretrained(candidate)
      except (ValueError, FileNotFoundError) as e:
        if candidate == path or not manager_dir.is_dir():
          raise
        log.warning("%s cannot be read (%s); evaluating the newest training checkpoint "
                    "instead", candidate, cause(e))
        break
      return variables, meta, str(candidate)
  failures = []
  steps = sorted((int(p.name) for p in manager_dir.iterdir() if p.name.isdigit()),
                 reverse=True) if manager_dir.is_dir() else []
  for step in steps:  # the newest that restores (nothing is moved: evaluation only reads)
    try:
      state = ocp.StandardCheckpointer().restore(manager_dir / str(step) / "state")
      variables = {"params": state["params"], **dict(state.get("model_state", {}) or {})}
    except Exception as e:  # noqa: BLE001
      log.warning("checkpoint %s cannot be restored (%s); trying the previous one",
                  manager_dir / str(step), cause(e))
      failures.append(f"{manager_dir / str(step)}: {cause(e)}")
      continue
    return to_numpy_tree(variables), None, f"{manager_dir / str(step)}"
  if failures:
    raise ValueError(f"{path}: no checkpoint can be restored:\n  " + "\n  ".join(failures))
  raise FileNotFoundError(
      f"{path}: no model to evaluate (expected wsol_model.json, export/ or checkpoints/<step>/)")
