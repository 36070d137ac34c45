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
restart would read.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Latest/best checkpoints of one training run."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, select_mode: str = "max"):
    self.workdir = pathlib.Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        self.workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "data"))
    self.best = ocp.CheckpointManager(
        self.workdir / "best",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, cleanup_tmp_directories=True,
            best_fn=lambda m: float(m["selection"]), best_mode=select_mode,
            keep_checkpoints_without_metrics=False),
        item_names=("variables", "metrics"))

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
    best_step = self.best.best_step()
    if best_step is not None:
      kept = self.best_metrics()
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
    step = self.best.best_step()
    if step is None:
      return None
    return dict(self.best.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))["metrics"])

  def restore_best(self, abstract_variables: Any) -> tuple[Any, int] | None:
    step = self.best.best_step()
    if step is None:
      return None
    out = self.best.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(abstract_variables)))
    return out["variables"], step

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _has_item(manager: ocp.CheckpointManager, step: int, item: str) -> bool:
  return (pathlib.Path(manager.directory) / str(step) / item).exists()


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


def write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def load_variables(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
  """Variables to evaluate from a model directory or a training workdir.

  Accepts (in this order) a model directory (``wsol_model.json``: ``weights_convert``
  output or a trainer export), a workdir's ``export/``, or a workdir's latest
  training checkpoint. Returns ``(variables, meta or None, description)``.
  """
  from wsol_jax.models import pretrained
  path = pathlib.Path(path).absolute()
  for candidate in (path, path / "export"):
    if (candidate / pretrained.META_FILE).is_file():
      variables, meta = pretrained.load_pretrained(candidate)
      return variables, meta, str(candidate)
  manager_dir = path / "checkpoints"
  if manager_dir.is_dir():
    steps = sorted(int(p.name) for p in manager_dir.iterdir() if p.name.isdigit())
    if steps:
      state = ocp.StandardCheckpointer().restore(manager_dir / str(steps[-1]) / "state")
      variables = {"params": state["params"], **dict(state.get("model_state", {}) or {})}
      return to_numpy_tree(variables), None, f"{manager_dir / str(steps[-1])}"
  raise FileNotFoundError(
      f"{path}: no model to evaluate (expected wsol_model.json, export/ or checkpoints/<step>/)")
