"""End-to-end training on the synthetic dataset: CLI runs, exact resume, data parallel, NaN, SIGTERM."""
import json
import os
import re
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from wsol_jax import config_lib, methods, optim, sharding, trainer
from wsol_jax import evaluate as evaluate_cli
from wsol_jax import train as train_cli
from wsol_jax.models import load_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("tfds")


def _args(method: str, workdir, data_dir, *extra: str) -> list[str]:
  return ["--config", str(ROOT / f"configs/{method}_synthetic.py:smoke"), "--workdir", str(workdir),
          f"--config.data.data_dir={data_dir}", *extra]


def _final_params(workdir: pathlib.Path, step: int):
  path = workdir / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute())["params"]


@pytest.mark.parametrize("method", ["tscam", "scm"])
def test_training_through_the_cli(method, tmp_path, data_dir, capsys):
  workdir = tmp_path / method
  assert train_cli.main(_args(method, workdir, data_dir)) == 0
  out = capsys.readouterr().out
  assert "center-Gaussian" in out and "maxboxacc_v2" in out
  results = json.loads((workdir / "results.json").read_text())
  assert results["center_gaussian"]["maxboxacc_v2"] > 0
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == list(range(1, len(train_rows) + 1))
  assert results["final_step"] == len(train_rows)
  assert all(np.isfinite(r["loss"]) for r in train_rows)
  assert {"val", "test", "test/center_gaussian"} <= {r["split"] for r in rows}
  # A few smoke steps guarantee no accuracy, so check what holds for any model instead.
  # results.json reports the single test evaluation logged at the last step.
  test = results["test"]
  assert [r for r in rows if r["split"] == "test"] == [
      {"split": "test", "step": results["final_step"], **test}]
  # V2 is the mean over its IoU thresholds, a looser IoU accepts every box a stricter one
  # does, and top-1 Loc counts images that are both classified and GT-known localised.
  per_iou = [test[f"maxboxacc_v2_iou{t}"] for t in (30, 50, 70)]
  assert test["maxboxacc_v2"] == pytest.approx(np.mean(per_iou), abs=1e-9)
  assert per_iou == sorted(per_iou, reverse=True)
  assert test["top1_loc"] <= min(test["gt_known"], test["cls_top1"])
  assert test["cls_top1"] <= test["cls_top5"]
  assert test["num_examples"] == 16  # the smoke config's num_test
  # The export is the val-selected model: the first val evaluation with the best
  # select_metric (later ties do not replace it).
  val_rows = [r for r in rows if r["split"] == "val"]
  best = max(r["maxboxacc_v2"] for r in val_rows)
  assert results["selected_step"] == next(r["step"] for r in val_rows if r["maxboxacc_v2"] == best)
  variables, meta = load_pretrained(workdir / "export")
  assert meta["method"] == method and meta["selected_step"] == results["selected_step"]
  # ...and it is the model that was tested: the evaluate CLI on the export reproduces the
  # test metrics and the baseline (same config, data and mesh).
  spec = str(ROOT / f"configs/{method}_synthetic.py:smoke")
  assert evaluate_cli.main(["--config", spec, "--checkpoint", str(workdir / "export"),
                            "--workdir", str(tmp_path / "eval"),
                            f"--config.data.data_dir={data_dir}"]) == 0
  again = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert again["metrics"] == pytest.approx(test, rel=1e-9, abs=1e-9)
  assert again["center_gaussian"] == pytest.approx(results["center_gaussian"], rel=1e-9, abs=1e-9)
  assert ("scm" in variables["params"]) == (method == "scm")
  pngs = sorted((workdir / "overlays").glob("*.png"))
  assert len(pngs) == 2
  for png in pngs:
    with Image.open(png) as im:
      assert im.size[0] >= 32 and im.mode == "RGB"


def _run(args, **kw):
  return subprocess.run([sys.executable, "-m", "wsol_jax.train", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, **kw)


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 300):
  start = time.time()
  while not path.exists():
    if proc.poll() is not None:
      raise AssertionError(f"training ended before {path} appeared: {proc.stderr.read()}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError(f"{path} did not appear")
    time.sleep(0.05)


RESUME = ("--config.training.total_steps=40", "--config.checkpoint.every_steps=4",
          "--config.eval.every_epochs=100", "--config.eval.test_at_end=False")


def test_sigkill_then_rerun_gives_bit_identical_parameters(tmp_path, data_dir):
  reference = tmp_path / "reference"
  done = _run(_args("tscam", reference, data_dir, *RESUME))
  assert done.returncode == 0, done.stderr[-3000:]
  killed = tmp_path / "killed"
  args = _args("tscam", killed, data_dir, *RESUME)
  proc = subprocess.Popen([sys.executable, "-m", "wsol_jax.train", *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(killed / "checkpoints" / "4", proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[-1] < 40, steps
  again = _run(args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resumed {killed} at step {steps[-1]}" in again.stderr
  a, b = _final_params(reference, 40), _final_params(killed, 40)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_damaged_newest_checkpoints_are_set_aside_and_training_resumes_bit_identically(
    tmp_path, data_dir):
  """The two newest checkpoints damaged after a finished run (a data chunk emptied, the
  iterator's JSON broken): the re-run resumes from the one before, says so once per
  checkpoint, keeps both aside and reaches the uninterrupted run's parameters."""
  args = ("--config.training.total_steps=12", "--config.checkpoint.every_steps=4",
          "--config.checkpoint.keep=3", "--config.eval.every_epochs=100",
          "--config.eval.test_at_end=False")
  reference, damaged = tmp_path / "reference", tmp_path / "damaged"
  for workdir in (reference, damaged):
    done = _run(_args("tscam", workdir, data_dir, *args))
    assert done.returncode == 0, done.stderr[-3000:]
  ckpts = damaged / "checkpoints"
  for f in (ckpts / "12" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")
  for f in (ckpts / "8" / "data").rglob("*"):
    if f.is_file():
      f.write_text("{not json")
  again = _run(_args("tscam", damaged, data_dir, *args))
  assert again.returncode == 0, again.stderr[-3000:]
  lines = [l for l in again.stderr.splitlines() if "cannot be restored" in l]
  assert len(lines) == 2 and str(ckpts / "12") in lines[0] and str(ckpts / "8") in lines[1]
  assert f"resumed {damaged} at step 4" in again.stderr
  assert sorted(p.name for p in (damaged / "unrestorable" / "checkpoints").iterdir()) == ["12", "8"]
  # The re-run steps 5-12 are logged once: the first run's rows of them were moved aside.
  rows = [json.loads(l) for l in (damaged / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 13))
  superseded = (damaged / "metrics.superseded.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in superseded if '"train"' in l] == list(range(5, 13))
  jax.tree_util.tree_map(np.testing.assert_array_equal, _final_params(reference, 12),
                         _final_params(damaged, 12))


def test_a_resume_with_another_config_is_refused_before_anything_is_written_or_logged(
    tmp_path, data_dir):
  workdir = tmp_path / "run"
  base = ("--config.checkpoint.every_steps=4", "--config.eval.every_epochs=100",
          "--config.eval.test_at_end=False")
  done = _run(_args("tscam", workdir, data_dir, "--config.training.total_steps=4", *base))
  assert done.returncode == 0, done.stderr[-3000:]
  record = (workdir / "config.json").read_text()
  files = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  for change, keys in ((("--config.model.kwargs.depth=3",), "model.kwargs.depth: 2 -> 3"),
                       (("--config.training.batch_size=8",), "training.batch_size: 16 -> 8")):
    refused = _run(_args("tscam", workdir, data_dir, "--config.training.total_steps=4", *base,
                         *change))
    assert refused.returncode == 2 and keys in refused.stderr, refused.stderr[-2000:]
    assert "cannot change on resume" in refused.stderr
    assert (workdir / "config.json").read_text() == record
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == files
  # Training longer is a harmless change: allowed, logged and kept in the history.
  longer = _run(_args("tscam", workdir, data_dir, "--config.training.total_steps=8", *base))
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert "resuming with config changes: training.total_steps: 4 -> 8" in longer.stderr
  # Output is not a terminal here: progress comes as log lines (in train.log too).
  assert re.search(r"step 8/8  loss \d+\.\d+  \d+\.\d img/s  ETA 00:00:00", longer.stderr)
  assert "step 8/8  loss" in (workdir / "train.log").read_text()
  history = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert [h["changes"] for h in history] == [{"training.total_steps": {"from": 4, "to": 8}}]
  assert json.loads((workdir / "config.json").read_text())["training"]["total_steps"] == 8


def test_profile_traces_the_asked_steps_and_the_compilation_cache_is_reused(tmp_path, data_dir):
  cache = tmp_path / "xla_cache"
  args = ("--config.training.total_steps=4", "--config.eval.every_epochs=100",
          "--config.eval.test_at_end=False", "--config.profile.start_step=1",
          "--config.profile.num_steps=2", f"--config.compilation_cache_dir={cache}")
  first = _run(_args("tscam", tmp_path / "a", data_dir, *args))
  assert first.returncode == 0, first.stderr[-3000:]
  assert "profile of steps 2-3 written to" in first.stderr
  traces = list((tmp_path / "a" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  cached = {p.name for p in cache.iterdir()}
  assert any(name.startswith("jit_step") for name in cached), cached
  config = json.loads((tmp_path / "a" / "config.json").read_text())
  assert config["runtime"]["compilation_cache"] == str(cache)
  # Another run with the same cache compiles nothing new for its train step.
  second = _run(_args("tscam", tmp_path / "b", data_dir, *args))
  assert second.returncode == 0, second.stderr[-3000:]
  assert {p.name for p in cache.iterdir() if p.name.startswith("jit_step")} == {
      n for n in cached if n.startswith("jit_step")}


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, data_dir):
  workdir = tmp_path / "term"
  args = _args("tscam", workdir, data_dir, "--config.training.total_steps=400",
               "--config.checkpoint.every_steps=4", "--config.eval.every_epochs=1000")
  proc = subprocess.Popen([sys.executable, "-m", "wsol_jax.train", *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(workdir / "checkpoints" / "4", proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == train_cli.EXIT_PREEMPTED == 75, err[-3000:]
  saved = [line for line in err.splitlines() if "SIGTERM: saved the checkpoint of step" in line]
  assert saved, err[-3000:]
  step = int(saved[0].split("step ")[1].split(";")[0])
  assert (workdir / "checkpoints" / str(step)).is_dir() and step < 400
  assert not (workdir / "results.json").exists()


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, capsys):
  workdir = tmp_path / "nan"
  code = train_cli.main(_args("tscam", workdir, data_dir, "--config.optimizer.lr=1e30",
                              "--config.checkpoint.every_steps=1", "--config.training.log_every_steps=1"))
  err = capsys.readouterr().err
  assert code == 1 and "non-finite loss or gradient at step" in err
  assert "ERROR wsol_jax.train: error: non-finite loss" in (workdir / "train.log").read_text()
  bad_step = int(err.split("at step ")[1].split()[0])
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] == bad_step - 1
  params = _final_params(workdir, saved[-1])
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("method", ["tscam", "scm"])
def test_eight_devices_give_the_loss_of_one(method):
  cfg = config_lib.load(str(ROOT / "configs/tscam_synthetic.py:smoke"))
  cfg.method = method
  cfg.model.num_classes = 6
  m = methods.get_method(cfg)
  sched = optim.make_schedule(cfg, 10, 1)
  params = jax.eval_shape(lambda: m.init_fresh(jax.random.key(0)))["params"]
  tx = optim.make_optimizer(cfg, sched, m.param_labels(params))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 6, (16,), dtype=np.int32)}
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    assert len(jax.devices()) == 8
    mesh = sharding.make_mesh(devices=devices)
    rep = sharding.replicated(mesh)
    state = jax.jit(lambda: trainer.init_state(m, tx, 0), out_shardings=rep)()
    step = jax.jit(trainer.make_train_step(m, tx, sched), in_shardings=(rep, sharding.batch_sharding(mesh)),
                   out_shardings=(rep, rep))
    new_state, metrics = step(state, sharding.global_batch(batch, mesh))
    out.append((float(metrics["loss"]), jax.tree_util.tree_map(np.asarray, new_state["params"])))
  assert abs(out[0][0] - out[1][0]) <= 1e-6
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), out[0][1], out[1][1])
