"""configs/agcam_voc.py end to end on a generated VOCdevkit: train, evaluate (folder and TFDS
voc/2012), explain, with a tiny ViT."""
import csv
import json
import pathlib

import numpy as np
import pytest

import voc_devkit
from wsol_jax import config_lib
from wsol_jax import evaluate as evaluate_cli
from wsol_jax import explain
from wsol_jax import train as train_cli
from wsol_jax.models import load_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/agcam_voc.py")
TINY = ("model.kwargs.img_size=32", "model.kwargs.patch_size=8", "model.kwargs.embed_dim=32",
        "model.kwargs.depth=2", "model.kwargs.num_heads=2", "data.image_size=32",
        "data.resize_size=36", "training.batch_size=8", "training.num_epochs=12",
        "training.log_every_steps=8", "optimizer.name=adamw", "optimizer.lr=0.003",
        "schedule.warmup_epochs=0", "eval.batch_size=8",
        "eval.num_overlays=2", "checkpoint.every_steps=24")


def test_shipped_config_is_the_papers_setting():
  c = config_lib.load(CONFIG)
  assert (c.method, c.model.name, c.model.num_classes) == ("agcam", "vit_base_patch16_224", 20)
  assert (c.data.name, c.data.train_split, c.data.test_split, c.eval.select_split) == (
      "voc", "train", "val", "")
  assert c.data.voc.single_class and c.data.voc.difficult_boxes and not c.data.voc.difficult_labels
  assert (c.eval.pixel_threshold, c.eval.abpc, c.agcam.stop_gradient) == (0.5, True, True)
  t = config_lib.load(CONFIG + ":tfds,rollout")
  assert (t.data.name, t.data.test_split, t.eval.map_kind) == ("voc_tfds", "validation", "rollout")


@pytest.mark.slow
def test_train_evaluate_explain(tmp_path):
  devkit = voc_devkit.write_devkit(tmp_path / "data")
  data = (f"data.voc.root={devkit}",)
  workdir = tmp_path / "run"
  assert train_cli.main(["--config", CONFIG, "--workdir", str(workdir),
                         *[f"--config.{o}" for o in TINY + data]]) == 0
  assert "23 of 24 images kept" in (workdir / "train.log").read_text()
  results = json.loads((workdir / "results.json").read_text())
  test = results["test"]
  assert test["num_examples"] == 7  # VOC val's single-class images
  assert 0 <= test["maxboxacc_v2"] <= 100 and {"abpc", "auc_lerf", "auc_morf"} <= set(test)
  # Colour is the class in this data: the run classifies most val images (5 of 7 on CPU).
  if test["cls_top1"] > 0:  # pixel metrics count correctly classified images only
    assert test["agcam_num_correct"] == round(test["cls_top1"] * 7 / 100)
    for key in ("agcam_pixel_acc", "agcam_iou", "agcam_dice", "agcam_precision", "agcam_recall"):
      assert 0 <= test[key] <= 1, key
  _, meta = load_pretrained(workdir / "export")
  assert meta["method"] == "agcam" and meta["num_classes"] == 20

  # The evaluate CLI on TFDS voc/2012 built from the same folder: the training run's numbers.
  tfds_dir = tmp_path / "tfds"
  voc_devkit.build_tfds_voc(devkit.parents[1], tfds_dir)
  assert evaluate_cli.main(["--config", CONFIG + ":tfds", "--checkpoint", str(workdir / "export"),
                            "--workdir", str(tmp_path / "eval"),
                            f"--config.data.data_dir={tfds_dir}",
                            *[f"--config.{o}" for o in TINY]]) == 0
  metrics = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
  assert metrics["num_examples"] == 7
  for key in ("maxboxacc_v2", "cls_top1", "abpc", "agcam_iou", "agcam_pixel_acc"):
    if key in test:
      np.testing.assert_allclose(metrics[key], test[key], rtol=1e-5, atol=1e-6, err_msg=key)

  # explain: AG-CAM maps of VOC val images with the exported model.
  images = sorted((devkit / "JPEGImages").glob("2009_*.jpg"))[:3]
  maps_dir = tmp_path / "maps"
  assert explain.main(["--checkpoint", str(workdir / "export"), "--method", "agcam",
                       "--images", *map(str, images), "--out", str(maps_dir)]) == 0
  rows = list(csv.DictReader(open(maps_dir / "summary.csv")))
  assert [r["name"] for r in rows] == [p.stem for p in images]
  for p in images:
    m = np.load(maps_dir / f"{p.stem}.npy")
    assert m.shape == (4, 4) and np.isfinite(m).all()
