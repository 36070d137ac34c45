"""Damaged checkpoints: resume, selection and evaluation fall back to the newest one that
restores, say so in one line (path + cause) and keep the damaged one aside."""
import json
import logging
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax import checkpoint as ckpt_lib

ABSTRACT = {"params": {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32)},
            "step": jax.ShapeDtypeStruct((), jnp.int32)}


class _Iterator:
  """A data iterator's checkpoint interface (grain's is JSON bytes)."""

  def __init__(self, position=0):
    self.position = position

  def get_state(self):
    return json.dumps({"position": self.position}).encode()

  def set_state(self, state):
    self.position = json.loads(state)["position"]


def _state(step):
  return {"params": {"w": jnp.full((16, 8), float(step))}, "step": jnp.int32(step)}


def _workdir(tmp_path, steps=(1, 2, 3)) -> pathlib.Path:
  ck = ckpt_lib.Checkpointer(tmp_path, keep=len(steps))
  for step in steps:
    ck.save(step, _state(step), _Iterator(10 * step))
  ck.close()
  return tmp_path


def _files(path: pathlib.Path):
  return sorted(p for p in path.rglob("*") if p.is_file())


def _truncate(d):
  for p in _files(d / "state"):
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])


def _empty(d):
  for p in _files(d / "state"):
    p.write_bytes(b"")


def _garbage_manifest(d):
  for p in _files(d / "state"):
    if p.name == "manifest.ocdbt":
      p.write_bytes(b"not a manifest")


def _bad_iterator_json(d):
  for p in _files(d / "data"):
    p.write_text("{not json")


def _no_state(d):
  shutil.rmtree(d / "state")


DAMAGE = [_truncate, _empty, _garbage_manifest, _bad_iterator_json, _no_state]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_resume_skips_a_damaged_latest_checkpoint_and_keeps_it_aside(tmp_path, damage, caplog):
  workdir = _workdir(tmp_path)
  damage(workdir / "checkpoints" / "3")
  before = {p.relative_to(workdir / "checkpoints" / "3"): p.read_bytes()
            for p in _files(workdir / "checkpoints" / "3")}
  ck = ckpt_lib.Checkpointer(workdir)
  iterator = _Iterator()
  with caplog.at_level(logging.WARNING, logger="wsol_jax.checkpoint"):
    state, step = ck.restore_newest(ABSTRACT, iterator)
  assert step == 2 and iterator.position == 20 and int(state["step"]) == 2
  np.testing.assert_array_equal(state["params"]["w"], 2.0)
  aside = workdir / ckpt_lib.UNRESTORABLE / "checkpoints" / "3"
  assert {p.relative_to(aside): p.read_bytes() for p in _files(aside)} == before  # untouched
  assert not (workdir / "checkpoints" / "3").exists() and ck.latest_step() == 2
  # (Orbax's abandoned read tasks may add an asyncio record of their own.)
  [line] = [r.getMessage() for r in caplog.records if r.name == "wsol_jax.checkpoint"]
  assert str(workdir / "checkpoints" / "3") in line and "cannot be restored" in line
  assert str(aside) in line and "\n" not in line
  # Training goes on: the next save of step 3 is a new checkpoint, the old one stays aside.
  ck.save(3, _state(3), _Iterator(30), wait=True)
  assert ck.restore_newest(ABSTRACT, _Iterator())[1] == 3 and aside.exists()
  ck.close()


def test_no_restorable_checkpoint_is_one_clear_error(tmp_path):
  workdir = _workdir(tmp_path, steps=(1, 2))
  _empty(workdir / "checkpoints" / "1")
  _no_state(workdir / "checkpoints" / "2")
  ck = ckpt_lib.Checkpointer(workdir)
  with pytest.raises(ckpt_lib.CheckpointError) as info:
    ck.restore_newest(ABSTRACT, _Iterator())
  message = str(info.value)
  assert "no checkpoint of this run can be restored" in message
  assert str(workdir / "checkpoints" / "1") in message and str(workdir / "checkpoints" / "2") in message
  assert sorted(p.name for p in (workdir / ckpt_lib.UNRESTORABLE / "checkpoints").iterdir()) == ["1", "2"]
  assert ckpt_lib.Checkpointer(workdir).restore_newest(ABSTRACT, _Iterator()) is None
  ck.close()


@pytest.mark.parametrize("damage", ["variables", "metrics"])
def test_a_damaged_best_checkpoint_is_set_aside_and_selection_starts_again(tmp_path, damage,
                                                                           caplog):
  ck = ckpt_lib.Checkpointer(tmp_path)
  variables = {"params": {"w": np.ones((16, 8), np.float32)}}
  assert ck.save_best(4, variables, {"acc": 50.0}, 50.0)
  ck.close()
  if damage == "variables":
    for f in _files(tmp_path / "best" / "4" / "variables"):
      f.write_bytes(b"")
  else:  # found when the workdir is opened: Orbax reads every step's metrics then
    (tmp_path / "best" / "4" / "metrics" / "metrics").write_text("{")
  abstract = {"params": {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32)}}
  with caplog.at_level(logging.WARNING, logger="wsol_jax.checkpoint"):
    ck = ckpt_lib.Checkpointer(tmp_path)
    assert ck.restore_best(abstract) is None
  [line] = [r.getMessage() for r in caplog.records]
  assert str(tmp_path / "best" / "4") in line and "\n" not in line
  assert (tmp_path / ckpt_lib.UNRESTORABLE / "best" / "4").is_dir()
  assert ck.best_metrics() is None
  assert ck.save_best(8, variables, {"acc": 10.0}, 10.0)  # any score beats no best
  restored, step = ck.restore_best(abstract)
  assert step == 8
  np.testing.assert_array_equal(restored["params"]["w"], 1.0)
  ck.close()


def test_evaluate_reads_the_newest_checkpoint_that_restores_without_moving_files(tmp_path, caplog):
  workdir = _workdir(tmp_path, steps=(1, 2))
  _garbage_manifest(workdir / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING, logger="wsol_jax.checkpoint"):
    variables, meta, where = ckpt_lib.load_variables(workdir)
  assert where == str(workdir / "checkpoints" / "1") and meta is None
  np.testing.assert_array_equal(variables["params"]["w"], 1.0)
  assert str(workdir / "checkpoints" / "2") in caplog.text
  assert (workdir / "checkpoints" / "2").is_dir()  # evaluation only reads
  _empty(workdir / "checkpoints" / "1")
  with pytest.raises(ValueError, match="no checkpoint can be restored"):
    ckpt_lib.load_variables(workdir)


def test_evaluate_falls_back_from_a_damaged_export_to_the_checkpoints(tmp_path, caplog):
  from wsol_jax.models import pretrained
  workdir = _workdir(tmp_path, steps=(1,))
  pretrained.save_pretrained(workdir / "export", {"params": {"w": np.zeros((16, 8), np.float32)}},
                             {"model": "x", "family": "vit", "kwargs": {}})
  variables, meta, where = ckpt_lib.load_variables(workdir)
  assert meta is not None and where == str(workdir / "export")
  for f in _files(workdir / "export" / "variables"):
    f.write_bytes(b"")
  with caplog.at_level(logging.WARNING, logger="wsol_jax.checkpoint"):
    variables, meta, where = ckpt_lib.load_variables(workdir)
  assert where == str(workdir / "checkpoints" / "1") and meta is None
  assert str(workdir / "export") in caplog.text and "newest training checkpoint" in caplog.text
  with pytest.raises(ValueError, match="cannot read the Orbax checkpoint"):
    ckpt_lib.load_variables(workdir / "export")  # a model directory itself: no fallback
