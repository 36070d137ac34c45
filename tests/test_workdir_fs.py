"""Workdirs on object storage: the same tiny training run (damaged checkpoint, resume, final
test, export), evaluation and explanation on a local path and on ``gs://`` — an offline
GCS (``fake_gcs``: epath's fsspec ``gcs`` protocol and TensorStore's GCS driver, both on one
in-memory object store)."""
import io
import json
import pathlib
import time
import uuid

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from PIL import Image

import fake_gcs
from wsol_jax import config_lib, files
from wsol_jax import evaluate as evaluate_cli
from wsol_jax import explain as explain_cli
from wsol_jax import train as train_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "configs/tscam_synthetic.py:smoke")


@pytest.fixture(scope="module")
def gcs():
  return fake_gcs.install()


def _train(workdir, data_dir, cache, *extra) -> list[str]:
  return ["--config", SPEC, "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
          f"--config.compilation_cache_dir={cache}", "--config.eval.every_epochs=100", *extra]


def _rows(text: str) -> list[dict]:
  return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_a_run_on_gcs_resumes_and_matches_the_same_run_on_a_local_path(
    tmp_path, gcs, monkeypatch, capsys):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # a URL taken for a relative path would appear here as ./gs:/...
  data_dir, cache = tmp_path / "tfds", tmp_path / "xla_cache"
  local = epath.Path(tmp_path / "local")
  bucket_prefix = f"wsol-test/{uuid.uuid4().hex}"
  remote = epath.Path(f"gs://{bucket_prefix}/run")
  results, errs = {}, {}
  for workdir in (local, remote):
    first = _train(workdir, data_dir, cache, "--config.training.total_steps=4",
                   "--config.eval.test_at_end=False")
    assert train_cli.main(first) == 0
    # The newest checkpoint's data-iterator JSON is damaged: the resume sets it aside in
    # unrestorable/ (a directory "move" on object storage) and resumes from step 2.
    (workdir / "checkpoints" / "4" / "data" / "metadata").write_text("{not json")
    capsys.readouterr()
    assert train_cli.main(_train(workdir, data_dir, cache, "--config.training.total_steps=6")) == 0
    errs[workdir] = capsys.readouterr().err
    results[workdir] = json.loads((workdir / "results.json").read_text())
  assert not list(cwd.iterdir())

  for workdir in (local, remote):
    err = errs[workdir]
    assert f"checkpoint {workdir / 'checkpoints' / '4'} cannot be restored" in err
    assert f"resumed {workdir} at step 2 of 6" in err
    assert (workdir / "unrestorable" / "checkpoints" / "4" / "state" / "_METADATA").is_file()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]
    log = (workdir / "train.log").read_text()
    assert "cannot be restored" in log and f"resumed {workdir} at step 2" in log
    history = _rows((workdir / "config_history.jsonl").read_text())
    assert [sorted(h["changes"]) for h in history] == [
        ["eval.test_at_end", "training.total_steps"]]
    assert json.loads((workdir / "config.json").read_text())["training"]["total_steps"] == 6
    assert len(list((workdir / "overlays").iterdir())) == 2
    assert (workdir / "export" / "wsol_model.json").is_file()

  # The same rows, metrics and parameters, whichever filesystem held the run.
  for name in ("metrics.jsonl", "metrics.superseded.jsonl"):
    a, b = (_rows((w / name).read_text()) for w in (local, remote))
    assert a == b
  rows = _rows((remote / "metrics.jsonl").read_text())
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  assert [(r["split"], r["step"]) for r in _rows(
      (remote / "metrics.superseded.jsonl").read_text())] == [("train", 3), ("train", 4), ("val", 4)]
  assert results[local] == results[remote] and results[remote]["final_step"] == 6
  restore = ocp.StandardCheckpointer().restore
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         restore(local / "checkpoints" / "6" / "state")["params"],
                         restore(remote / "checkpoints" / "6" / "state")["params"])
  # The arrays went to the bucket through TensorStore (OCDBT data files), next to the files
  # written through epath.
  stored = [k for k in gcs.store if k.startswith(f"{bucket_prefix}/run/checkpoints/6/state/")]
  assert any("/d/" in k for k in stored) and any(k.endswith("_METADATA") for k in stored)

  # evaluate and explain read the gs:// workdir and write gs:// outputs.
  test = results[remote]["test"]
  assert evaluate_cli.main(["--config", SPEC, "--checkpoint", str(remote),
                            "--workdir", str(remote / "eval"),
                            f"--config.data.data_dir={data_dir}"]) == 0
  evaluated = json.loads((remote / "eval" / "results.json").read_text())
  assert evaluated["checkpoint"] == str(remote / "export")
  assert evaluated["metrics"] == pytest.approx(test)
  assert all(epath.Path(p).is_file() for p in evaluated["overlays"])
  picture = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), np.uint8)).save(
      picture, format="PNG")
  image = remote.parent / "images" / "bird.png"
  image.write_bytes(picture.getvalue())
  out = remote / "explained"
  assert explain_cli.main(["--checkpoint", str(remote / "export"), "--images", str(image),
                           "--out", str(out)]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["bird.npy", "bird.png", "summary.csv"]
  assert np.load(io.BytesIO((out / "bird.npy").read_bytes())).shape == (4, 4)
  with Image.open(io.BytesIO((out / "bird.png").read_bytes())) as im:
    assert im.size == (52, 40)
  assert not list(cwd.iterdir())


def test_workdir_urls_other_than_gs_are_refused_naming_the_flag(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(config_lib.ConfigError, match=r"--workdir s3://b/run: s3:// URLs are not"):
    config_lib.dir_path("s3://b/run", "--workdir")
  import fsspec

  def no_gcsfs(protocol):
    raise ImportError("Install gcsfs to access Google Storage")

  monkeypatch.setattr(fsspec, "get_filesystem_class", no_gcsfs)
  monkeypatch.setenv("EPATH_USE_TF", "false")
  with pytest.raises(config_lib.ConfigError, match=r"gs://b/run: gs:// paths need gcsfs .*gcsfuse"):
    config_lib.dir_path("gs://b/run", "--workdir")
  assert config_lib.dir_path("runs/x", "--workdir") == tmp_path / "runs/x"
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["local", "gs"])
def test_appender_reaches_the_file_as_documented(tmp_path, gcs, where):
  path = (epath.Path(tmp_path) if where == "local"
          else epath.Path(f"gs://wsol-test/{uuid.uuid4().hex}")) / "log.txt"
  path.write_text("old\n")
  out = files.Appender(path, every_s=3600.0)
  out.write("a\n")
  out.flush()
  # Locally every flush reaches the file; on object storage an upload waits for the interval
  # or a forced flush (here the interval is an hour).
  assert path.read_text() == ("old\na\n" if where == "local" else "old\n")
  out.flush(force=True)
  assert path.read_text() == "old\na\n"
  out.write("b\n")
  out.close()
  assert out.closed and path.read_text() == "old\na\nb\n"
  files.append_text(path, "c\n")
  assert path.read_text() == "old\na\nb\nc\n"
  files.write_json(path.parent / "r.json", {"x": 1})
  assert json.loads((path.parent / "r.json").read_text()) == {"x": 1}
  assert sorted(p.name for p in path.parent.iterdir()) == ["log.txt", "r.json"]
  # A directory move (``unrestorable/``): on object storage a copy of each object, then a
  # delete of the source.
  source = path.parent / "checkpoints" / "4"
  (source / "state").mkdir(parents=True, exist_ok=True)
  (source / "state" / "a").write_bytes(b"\x00\x01")
  (source / "_CHECKPOINT_METADATA").write_text("{}")
  target = path.parent / "unrestorable" / "checkpoints" / "4"
  target.parent.mkdir(parents=True, exist_ok=True)
  files.move_tree(source, target)
  assert not source.exists() and (target / "state" / "a").read_bytes() == b"\x00\x01"
  assert (target / "_CHECKPOINT_METADATA").read_text() == "{}"


def test_a_flushed_line_reaches_object_storage_without_another_write(gcs):
  path = epath.Path(f"gs://wsol-test/{uuid.uuid4().hex}/train.log")
  out = files.Appender(path, every_s=0.2)
  out.write("first\n")
  out.flush()  # within the interval of the (empty) start: left to the timer
  for _ in range(200):
    if path.exists():
      break
    time.sleep(0.05)
  assert path.read_text() == "first\n"
  out.close()


@pytest.mark.slow
def test_a_profiler_trace_of_a_gcs_workdir_is_copied_there(gcs):
  from wsol_jax import trainer
  prefix = f"wsol-test/{uuid.uuid4().hex}/run"
  profiler = trainer._Profiler(epath.Path(f"gs://{prefix}/profile"), start=0, num=1)
  profiler.before(0)
  profiler.after(1, jax.numpy.arange(8.0) * 2)
  assert not profiler.active
  assert [k for k in gcs.store if k.startswith(f"{prefix}/profile/") and k.endswith(".xplane.pb")]


def test_tensorboard_events_of_a_gcs_workdir_are_copied_there(gcs):
  pytest.importorskip("tensorboardX")  # optional: TensorBoard events only when installed
  from wsol_jax import reporting
  workdir = epath.Path(f"gs://wsol-test/{uuid.uuid4().hex}/run")
  writer = reporting.MetricWriter(workdir)
  writer.write_train([{"step": 1, "loss": 1.0}], steps_per_epoch=4)
  writer.close()
  names = [p.name for p in (workdir / "tensorboard").iterdir()]
  assert len(names) == 1 and names[0].startswith("events.out.tfevents")
  assert (workdir / "tensorboard" / names[0]).stat().length > 0
