"""Bad data stops a run early with one message: a training split whose images cannot be read
(naming the split and a few files, instead of waiting forever for a readable image), and a bad
annotation in any split (file:line, before the first training step)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wsol_jax.data import config as data_config
from wsol_jax.data import pipeline, records

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _dataset(root: pathlib.Path, good: int, bad: int) -> pathlib.Path:
  """A CUB-style wsolevaluation folder whose train split has ``good`` readable images and
  ``bad`` truncated ones (test/val: the readable ones)."""
  entries = []
  for k in range(good + bad):
    image_id = f"00{k % 2}.class{k % 2}/img{k:03d}.jpg"
    path = root / "images" / image_id
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 40, 3), np.uint8)).save(path)
    if k >= good:
      path.write_bytes(path.read_bytes()[:40])  # a header and nothing else
    entries.append((image_id, k % 2))
  for split, rows in (("train", entries), ("val", entries[:good]), ("test", entries[:good])):
    d = root / "metadata" / split
    d.mkdir(parents=True, exist_ok=True)
    (d / "image_ids.txt").write_text("\n".join(i for i, _ in rows))
    (d / "class_labels.txt").write_text("\n".join(f"{i},{c}" for i, c in rows))
    (d / "image_sizes.txt").write_text("\n".join(f"{i},40,40" for i, _ in rows))
    (d / "localization.txt").write_text("\n".join(f"{i},5,5,30,30" for i, _ in rows))
  return root


def _data_config(root: pathlib.Path, limit: int = 100):
  cfg = data_config.default_data_config()
  cfg.name = "wsol_metadata"
  cfg.metadata.update(dict(dataset="CUB", metadata_dir=str(root / "metadata"),
                           image_root=str(root / "images"), num_classes=2))
  cfg.image_size, cfg.resize_size = 32, 36
  cfg.max_consecutive_unreadable = limit
  return cfg


def test_a_split_without_a_readable_image_fails_before_training(tmp_path):
  root = _dataset(tmp_path, good=0, bad=12)
  with pytest.raises(records.UnreadableDataError) as info:
    pipeline.build_train_iterator(_data_config(root), batch_size=4, seed=0)
  message = str(info.value)
  assert "training split 'train': none of any of its 12 images can be read" in message
  assert "000.class0/img000.jpg" in message and "(9 more)" in message and "\n" not in message


def test_a_long_run_of_unreadable_images_stops_the_iterator(tmp_path):
  root = _dataset(tmp_path, good=1, bad=40)  # the readable one comes first (preflight passes)
  it = pipeline.build_train_iterator(_data_config(root, limit=10), batch_size=8, seed=0)
  with pytest.raises(records.UnreadableDataError, match=r"10 images in a row cannot be read"):
    for _ in range(50):
      next(it)
  unlimited = pipeline.build_train_iterator(_data_config(root, limit=0), batch_size=8, seed=0)
  assert next(unlimited)["image"].shape == (8, 32, 32, 3)  # 0: no limit (skips and goes on)


def _config_file(tmp_path, root, *extra_lines: str) -> pathlib.Path:
  """A smoke config whose data is the wsolevaluation folder ``root``."""
  cfg = tmp_path / "config.py"
  cfg.write_text("\n".join([
      "from wsol_jax import config_lib",
      "def get_config():",
      "  c = config_lib.base_config()",
      "  config_lib.set_synthetic_vit(c)",
      "  config_lib.set_synthetic_smoke(c)",
      "  c.data.name = 'wsol_metadata'",
      f"  c.data.metadata.update(dict(dataset='CUB', metadata_dir={str(root / 'metadata')!r},",
      f"                              image_root={str(root / 'images')!r}, num_classes=2))",
      "  c.model.num_classes = 2",
      *(f"  {line}" for line in extra_lines),
      "  return c", ""]))
  return cfg


def _train_command(tmp_path, cfg) -> list[str]:
  return [sys.executable, "-m", "wsol_jax.train", "--config", str(cfg), "--workdir",
          str(tmp_path / "run")]


def _cli(tmp_path, root):
  return subprocess.run(_train_command(tmp_path, _config_file(tmp_path, root)), cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_the_train_cli_ends_with_one_error_line_instead_of_hanging(tmp_path):
  done = _cli(tmp_path, _dataset(tmp_path / "data", good=0, bad=8))
  assert done.returncode == 1, done.stderr[-2000:]
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "training split 'train'" in errors[0] and "img000.jpg" in errors[0]
  assert len(done.stderr.splitlines()) < 40, done.stderr[-3000:]
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_box_in_the_test_split_stops_the_run_before_the_first_step(tmp_path):
  root = _dataset(tmp_path / "data", good=16, bad=0)
  loc = root / "metadata" / "test" / "localization.txt"
  lines = loc.read_text().splitlines()
  lines[3] = lines[3].rsplit(",", 2)[0] + ",90,30"  # x1 = 90 > W = 40
  loc.write_text("\n".join(lines))
  done = _cli(tmp_path, root)
  assert done.returncode == 1, done.stderr[-2000:]
  [error] = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert f"{loc}:4: box of image '001.class1/img003.jpg' leaves the image" in error
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unreadable_images_are_named_once_and_counted_in_aggregate(tmp_path, caplog):
  root = _dataset(tmp_path, good=8, bad=4)
  with caplog.at_level("WARNING", logger="wsol_jax.data"):
    it = pipeline.build_train_iterator(_data_config(root), batch_size=8, seed=0)
    for _ in range(12):  # 8 epochs' worth of batches: every bad image is read ~8 times
      next(it)
  named = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unreadable image")]
  assert len(named) == 4 == len(set(named))  # each image once, not at every read
  counts = [r.getMessage() for r in caplog.records if "skipped so far" in r.getMessage()]
  assert it.num_skipped >= 16 and len(counts) <= it.num_skipped.bit_length()


def test_sigterm_while_the_input_pipeline_stalls_stops_the_run(tmp_path):
  """No readable image and no limit: the loop waits for data forever; SIGTERM ends it."""
  import signal
  import time
  root = _dataset(tmp_path / "data", good=0, bad=40)
  cfg = _config_file(tmp_path, root, "c.data.max_consecutive_unreadable = 0",
                     "c.eval.select_split = ''")
  proc = subprocess.Popen(_train_command(tmp_path, cfg), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  log = tmp_path / "run" / "train.log"
  deadline = time.time() + 240
  while not (log.is_file() and "starting a new run" in log.read_text()):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.2)
  time.sleep(3)  # inside the data wait by now (the first batch never comes)
  proc.send_signal(signal.SIGTERM)
  code = proc.wait(timeout=60)
  err = proc.stderr.read()
  assert code == 75, err[-3000:]
  assert "SIGTERM while waiting for training data at step 0" in err
