"""The evaluate CLI on data made on the fly: a wsolevaluation-layout folder and the synthetic TFDS set."""
import json
import re
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from wsol_jax import config_lib, methods
from wsol_jax import evaluate as evaluate_cli
from wsol_jax.models import save_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ("model.kwargs.img_size=32", "model.kwargs.patch_size=8", "model.kwargs.embed_dim=32",
        "model.kwargs.depth=2", "model.kwargs.num_heads=2", "data.image_size=32",
        "data.resize_size=36", "eval.batch_size=8", "eval.num_overlays=2")


def _export(config_spec: str, overrides, out: pathlib.Path) -> pathlib.Path:
  cfg = config_lib.load(config_spec, overrides)
  method = methods.get_method(cfg)
  variables = jax.tree_util.tree_map(np.asarray, method.init_fresh(jax.random.key(0)))
  return save_pretrained(out, variables, method.export_meta())


@pytest.fixture(scope="module")
def wsol_folder(tmp_path_factory) -> pathlib.Path:
  """A CUB-like wsolevaluation folder: 3 classes, objects at known boxes, one grayscale image."""
  root = tmp_path_factory.mktemp("wsoleval")
  rng = np.random.default_rng(0)
  for split, n in (("train", 6), ("val", 3), ("test", 6)):
    ids, labels, sizes, boxes = [], [], [], []
    for i in range(n):
      label = i % 3
      w, h = int(rng.integers(40, 70)), int(rng.integers(40, 70))
      x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
      x1, y1 = min(w - 1, x0 + w // 3), min(h - 1, y0 + h // 3)
      image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
      image[y0:y1 + 1, x0:x1 + 1] = 200 + 20 * label
      image_id = f"{label + 1:03d}.Bird_{label}/{split}_{i}.jpg"
      path = root / "dataset" / image_id
      path.parent.mkdir(parents=True, exist_ok=True)
      pil = Image.fromarray(image)
      (pil.convert("L") if i == 1 else pil).save(path, "JPEG")
      ids.append(image_id)
      labels.append(f"{image_id},{label}")
      sizes.append(f"{image_id},{w},{h}")
      boxes.append(f"{image_id},{x0},{y0},{x1},{y1}")
    meta = root / "metadata" / split
    meta.mkdir(parents=True)
    for name, lines in (("image_ids", ids), ("class_labels", labels), ("image_sizes", sizes),
                        ("localization", boxes)):
      (meta / f"{name}.txt").write_text("\n".join(lines) + "\n")
  return root


def test_evaluate_a_wsolevaluation_folder(tmp_path, wsol_folder, capsys):
  data = (f"data.metadata.metadata_dir={wsol_folder / 'metadata'}",
          f"data.metadata.image_root={wsol_folder / 'dataset'}",
          "data.metadata.num_classes=3", "model.num_classes=3", "data.max_boxes=2")
  model_dir = _export(str(ROOT / "configs/tscam_cub.py"), TINY + data, tmp_path / "model")
  code = evaluate_cli.main(["--config", str(ROOT / "configs/tscam_cub.py"), "--checkpoint",
                            str(model_dir), "--workdir", str(tmp_path / "out"),
                            *[f"--config.{o}" for o in TINY + data]])
  assert code == 0
  out = capsys.readouterr().out
  assert "center-Gaussian" in out and "6 images" in out
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  metrics = results["metrics"]
  assert metrics["num_examples"] == 6 and 0 <= metrics["maxboxacc_v2"] <= 100
  assert {"gt_known", "top1_loc", "cls_top1", "cls_top5"} <= set(metrics)
  assert len(results["overlays"]) == 2 and all(pathlib.Path(p).is_file() for p in results["overlays"])
  # The val split (CUBV2's place) works the same way.
  assert evaluate_cli.main(["--config", str(ROOT / "configs/tscam_cub.py"), "--checkpoint",
                            str(model_dir), "--split", "val", "--workdir", str(tmp_path / "val"),
                            *[f"--config.{o}" for o in TINY + data]]) == 0
  assert json.loads((tmp_path / "val" / "results.json").read_text())["metrics"]["num_examples"] == 3


def test_evaluate_the_synthetic_tfds_dataset_with_paper_protocols(tmp_path, capsys):
  data = (f"data.data_dir={tmp_path / 'tfds'}",)
  spec = str(ROOT / "configs/scm_synthetic.py:smoke")
  model_dir = _export(spec, data, tmp_path / "model")
  assert evaluate_cli.main(["--config", spec, "--checkpoint", str(model_dir),
                            *[f"--config.{o}" for o in data]]) == 0
  results = json.loads((model_dir / "eval_test" / "results.json").read_text())
  metrics = results["metrics"]
  for key in ("maxboxacc_v2", "pxap", "tscam_top1_loc", "scm_gt_known", "scm_top5_loc"):
    assert 0 <= metrics[key] <= 100, key
  assert results["center_gaussian"]["maxboxacc_v2"] > 0


def test_evaluate_rejects_a_checkpoint_that_does_not_fit(tmp_path, capsys):
  spec = str(ROOT / "configs/tscam_synthetic.py:smoke")
  data = (f"data.data_dir={tmp_path / 'tfds'}",)
  model_dir = _export(spec, data, tmp_path / "model")
  code = evaluate_cli.main(["--config", spec, "--checkpoint", str(model_dir),
                            "--config.model.kwargs.depth=3", *[f"--config.{o}" for o in data]])
  err = capsys.readouterr().err
  assert code == 1 and re.search(r"missing +params/blocks_2", err), err
  code = evaluate_cli.main(["--config", str(ROOT / "configs/scm_synthetic.py:smoke"),
                            "--checkpoint", str(model_dir), *[f"--config.{o}" for o in data]])
  assert code == 1 and "holds a 'tscam' model" in capsys.readouterr().err
  assert evaluate_cli.main(["--config", spec, "--checkpoint", str(tmp_path / "nothing")]) == 1
  assert "no model to evaluate" in capsys.readouterr().err


def test_evaluate_rejects_url_paths(tmp_path, capsys):
  for flag in ("--checkpoint", "--workdir"):
    args = {"--checkpoint": str(tmp_path), "--workdir": str(tmp_path / "out"), flag: "gs://b/run"}
    code = evaluate_cli.main(["--config", "configs/scm_synthetic.py",
                              *(x for kv in args.items() for x in kv)])
    err = capsys.readouterr().err
    assert code == 2 and f"{flag} gs://b/run" in err
  assert not (tmp_path / "out").exists()
