"""Your own data: classes, boxes, masks, sizes and length derived from the data (``derive``),
the class-folder layout (``class_folders``) and ``configs/own_data.py`` end to end."""
import json
import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

from wsol_jax import config_lib
from wsol_jax import evaluate as evaluate_cli
from wsol_jax import train as train_cli
from wsol_jax.data import class_folders, derive, pipeline, sources
from wsol_jax.data import config as data_config
from wsol_jax.data.wsol_metadata import MetadataError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("c0", "c1", "c2")
PER_SPLIT = {"train": 6, "val": 2, "test": 2}  # images per class


def _boxes(k, j, w, h):
  """1 box, or 2 on every third image."""
  out = [(2, 3, w // 2, h - 2)]
  if (k + j) % 3 == 0:
    out.append((w // 2, 1, w - 1, h // 2))
  return out


def _write(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A wsolevaluation folder (metadata/ + images/) with a mask/ folder, and a boxes.csv
  with the same splits next to the class sub-folders of images/."""
  root = tmp_path_factory.mktemp("own")
  images, meta = root / "images", root / "metadata"
  rows, split_lines = ["relative_path,x0,y0,x1,y1,split"], {s: [] for s in PER_SPLIT}
  rng = np.random.default_rng(0)
  n = 0
  for split, count in PER_SPLIT.items():
    for k, name in enumerate(CLASSES):
      for j in range(count):
        w, h = 40 + 2 * (n % 5), 30 + (n % 3)
        image_id = f"{name}/{split}_{j}.png"
        (images / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(images / image_id)
        mask = np.zeros((h, w), np.uint8)
        boxes = _boxes(k, j, w, h)
        for x0, y0, x1, y1 in boxes:
          mask[y0:y1, x0:x1] = 255
        (images / "mask" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(images / "mask" / name / f"{split}_{j}.png")
        split_lines[split].append((image_id, k, w, h, boxes))
        rows += [f"{image_id},{x0},{y0},{x1},{y1},{split}" for x0, y0, x1, y1 in boxes]
        n += 1
  for split, entries in split_lines.items():
    d = meta / split
    _write(d / "image_ids.txt", [e[0] for e in entries])
    _write(d / "class_labels.txt", [f"{e[0]},{e[1]}" for e in entries])
    _write(d / "image_sizes.txt", [f"{e[0]},{e[2]},{e[3]}" for e in entries])
    _write(d / "localization.txt", [f"{e[0]},{','.join(map(str, b))}" for e in entries
                                    for b in e[4]])
  _write(images / "boxes.csv", rows)
  return root


def _data_cfg(root, layout="wsolevaluation", **metadata):
  cfg = data_config.default_data_config()
  cfg.name = "wsol_metadata"
  cfg.image_size, cfg.resize_size = 32, 36
  cfg.metadata.image_root = str(root / "images")
  if layout == "wsolevaluation":
    cfg.metadata.metadata_dir = str(root / "metadata")
  cfg.metadata.update(metadata)
  return cfg


def test_wsolevaluation_folder_derives_classes_boxes_and_masks(data, caplog):
  cfg = _data_cfg(data)
  facts = derive.data_facts(cfg)
  assert (facts.num_classes, facts.max_boxes) == (3, 2)
  assert facts.class_names == CLASSES
  assert set(facts.masks) == {"train", "val", "test"}
  assert facts.num_images == {"train": 18, "val": 6, "test": 6}
  assert data_config.resolve_max_boxes(cfg) == 2
  with caplog.at_level(logging.INFO, logger="wsol_jax"):
    ev = pipeline.build_eval_iterator(cfg, "test", batch_size=8)
    batches = list(ev)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no box dropped
  boxes = np.concatenate([b["boxes"] for b in batches])[:6]
  assert boxes.shape == (6, 2, 4) and (boxes[:, 1, 0] >= 0).sum() == 2  # two 2-box images
  masks = np.concatenate([b["mask"] for b in batches])[:6]
  assert set(np.unique(masks)) == {0, 1}
  # The mask is the box union (box x0 = 2 -> 2 * 32 / W on the 32 px grid).
  assert masks[0, 16, 0] == 0 and masks[0, 16, 4] == 1


def test_class_folders_with_boxes_csv_give_the_same_records(data):
  a = sources.make_source(_data_cfg(data), "test")
  b = sources.make_source(_data_cfg(data, layout="folders"), "test")
  assert derive.data_facts(_data_cfg(data, layout="folders")).max_boxes == 2
  assert sorted(a.image_ids) == sorted(b.image_ids) and len(a) == 6
  for i, image_id in enumerate(a.image_ids):
    ra, rb = a[i], b[b.image_ids.index(image_id)]
    assert ra["label"] == rb["label"] and ra["image_id"] == rb["image_id"]
    np.testing.assert_array_equal(ra["boxes"], rb["boxes"])
    np.testing.assert_array_equal(ra["image"], rb["image"])
    np.testing.assert_array_equal(ra["mask"], rb["mask"])


def test_class_folders_split_without_a_split_column_is_deterministic(data, tmp_path):
  rows = (data / "images" / "boxes.csv").read_text().splitlines()
  no_split = tmp_path / "boxes.csv"
  no_split.write_text("\n".join(r.rsplit(",", 1)[0] for r in rows[1:]) + "\n")
  kw = dict(fractions=(0.6, 0.2, 0.2), seed=3)
  one = class_folders.read_class_folders(str(data / "images"), str(no_split), **kw)
  two = class_folders.read_class_folders(str(data / "images"), str(no_split), **kw)
  assert {s: m.image_ids for s, m in one.items()} == {s: m.image_ids for s, m in two.items()}
  assert {s: len(m.image_ids) for s, m in one.items()} == {"train": 18, "val": 6, "test": 6}
  for split, meta in one.items():  # every class in every split
    assert sorted(set(meta.labels.values())) == [0, 1, 2], split
  other = class_folders.read_class_folders(str(data / "images"), str(no_split),
                                           fractions=(0.6, 0.2, 0.2), seed=4)
  assert other["test"].image_ids != one["test"].image_ids


@pytest.mark.parametrize("row, message", [
    ("c0/train_0.png,1,2,3", "boxes.csv:3: expected 'relative_path,x0,y0,x1,y1[,split]'"),
    ("c0/nope.png,1,2,3,4", "boxes.csv:3: 'c0/nope.png' is not an image in a class"),
    ("c0/train_0.png,1,2,x,4", "boxes.csv:3: box values must be numbers"),
    ("c0/train_0.png,5,2,3,4", "boxes.csv:3: invalid box"),
    ("c0/train_0.png,1,2,300,4", "boxes.csv:3: box of 'c0/train_0.png' leaves the image"),
])
def test_a_bad_boxes_row_is_one_error_naming_file_and_line(data, tmp_path, row, message):
  path = tmp_path / "boxes.csv"
  path.write_text(f"relative_path,x0,y0,x1,y1\nc0/train_1.png,1,1,5,5\n{row}\n")
  with pytest.raises(MetadataError, match=message.replace("[", r"\[").replace("]", r"\]")
                     .replace("(", r"\(")):
    class_folders.read_class_folders(str(data / "images"), str(path))


def test_labels_that_are_not_0_to_k_minus_1_are_one_error(data, tmp_path):
  meta = tmp_path / "metadata"
  for split in PER_SPLIT:
    src = data / "metadata" / split
    (meta / split).mkdir(parents=True)
    for f in src.iterdir():
      text = f.read_text()
      if f.name == "class_labels.txt":  # class 1 -> 3: labels 0, 2, 3
        text = "\n".join(line[:-1] + ("3" if line.endswith(",1") else line[-1])
                         for line in text.splitlines())
      (meta / split / f.name).write_text(text)
  cfg = _data_cfg(data, metadata_dir=str(meta))
  with pytest.raises(MetadataError, match=r"class_labels.txt: labels must be 0..K-1 .*"
                     r"labels \[1\] of 0..3 have no image"):
    derive.data_facts(cfg)
  cfg.metadata.num_classes = 4  # explicitly allowed
  assert derive.data_facts(cfg).num_classes == 4


def test_resolve_config_fills_the_keys_from_the_data(data):
  cfg = config_lib.load(str(ROOT / "configs/own_data.py:scm"),
                        [f"data.metadata.image_root={data / 'images'}",
                         "training.batch_size=8"])
  assert cfg.model.num_classes == 0 and cfg.data.image_size == 0
  resolved, lines = derive.resolve_config(cfg)
  assert cfg.model.num_classes == 0  # the given config is not changed
  assert resolved.model.num_classes == 3 and resolved.data.max_boxes == 0
  assert resolved.data.image_size == 128  # median side ~36 px, clamped to [128, 224]
  assert resolved.data.resize_size == 146
  assert resolved.training.total_steps == max(derive.AUTO_EPOCHS * (18 // 8),
                                              derive.AUTO_MIN_STEPS)
  text = "\n".join(lines)
  assert "model.num_classes=0 -> 3" in text and "data.max_boxes=0 -> 2" in text
  assert "training length from the data" in text
  resolved.model.num_classes = 5
  with pytest.raises(config_lib.ConfigError, match="model.num_classes=5 but the data"):
    derive.resolve_config(resolved)


def test_a_mismatched_model_num_classes_is_one_line_exit_2(data, tmp_path, capsys):
  workdir = tmp_path / "w"
  code = train_cli.main(["--config", str(ROOT / "configs/own_data.py:cam"),
                         "--workdir", str(workdir), "--config.model.num_classes=5",
                         f"--config.data.metadata.image_root={data / 'images'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err[-1].startswith("error: model.num_classes=5 but the data "
                                          "(class folders")
  assert "has 3 classes" in err[-1] and "Traceback" not in "\n".join(err)
  assert not workdir.exists()


_TINY = {
    "cam": ["model.kwargs.layers=(1,1,1,1)", "model.kwargs.width=8"],
    "tscam": ["model.kwargs.img_size=32", "model.kwargs.patch_size=8",
              "model.kwargs.embed_dim=32", "model.kwargs.depth=2", "model.kwargs.num_heads=2"],
}


@pytest.mark.parametrize("method", ["cam", "tscam"])
def test_own_data_config_trains_and_evaluates(data, tmp_path, method, capfd):
  workdir = tmp_path / method
  overrides = [f"--config.{o}" for o in _TINY[method]] + [
      f"--config.data.metadata.metadata_dir={data / 'metadata'}",
      f"--config.data.metadata.image_root={data / 'images'}",
      "--config.training.batch_size=8", "--config.training.total_steps=3",
      "--config.eval.batch_size=8", "--config.eval.num_overlays=1",
      "--config.checkpoint.every_steps=3",
      "--config.data.image_size=32"]  # the derived 128 px is checked above, and is slower
  config = str(ROOT / f"configs/own_data.py:{method}")
  assert train_cli.main(["--config", config, "--workdir", str(workdir)] + overrides) == 0
  log = (workdir / "train.log").read_text()
  assert "model.num_classes=0 -> 3 (from the data)" in log
  assert "data.max_boxes=0 -> 2" in log and "more than max_boxes" not in log
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["model"]["num_classes"] == 3
  assert stored["data"]["image_size"] == 32 and stored["data"]["resize_size"] == 37
  assert stored["training"]["total_steps"] == 3
  results = json.loads((workdir / "results.json").read_text())
  assert results["final_step"] == 3 and "pxap" in results["test"]
  if method != "tscam":
    return
  capfd.readouterr()  # the evaluate CLI resolves the same keys from the data
  assert evaluate_cli.main(["--config", config, "--checkpoint", str(workdir), "--split", "val",
                            "--workdir", str(tmp_path / "eval")] + overrides) == 0
  assert "model.num_classes=0 -> 3" in capfd.readouterr().err
  assert "pxap" in json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]


def test_a_mask_folder_missing_images_of_a_split_is_reported_and_not_used(data, tmp_path,
                                                                          caplog):
  import shutil
  shutil.copytree(data / "images", tmp_path / "images")
  (tmp_path / "images" / "mask" / "c1" / "test_0.png").unlink()
  cfg = _data_cfg(tmp_path, layout="folders")
  with caplog.at_level(logging.WARNING, logger="wsol_jax"):
    facts = derive.data_facts(cfg)
  assert sorted(facts.masks) == ["train", "val"]
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == 1 and "1 of 6 test images have no mask" in warned[0]
  assert not sources.make_source(cfg, "test").has_masks
  assert sources.make_source(cfg, "val").has_masks


def test_without_val_and_test_splits_the_run_keeps_the_last_checkpoint_and_skips_the_test(
    data, tmp_path):
  rows = (data / "images" / "boxes.csv").read_text().splitlines()
  no_split = tmp_path / "boxes.csv"
  no_split.write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")  # header too
  cfg = config_lib.load(str(ROOT / "configs/own_data.py:tscam"),
                        [f"data.metadata.image_root={data / 'images'}",
                         f"data.metadata.boxes_file={no_split}",
                         "data.metadata.split_fractions=(1.0, 0.0, 0.0)",
                         "training.batch_size=8"])
  resolved, lines = derive.resolve_config(cfg)
  assert derive.data_facts(resolved.data).num_images == {"train": 30}
  assert resolved.eval.select_split == "" and resolved.data.test_split == ""
  assert any("no 'val' split" in line for line in lines)
