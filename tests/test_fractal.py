"""Formula-driven pretraining data (``wsol_jax.data.fractal``), ``configs/pretrain_fractal.py``."""
import json
import pathlib

import cv2
import jax
import numpy as np
import pytest
from flax import traverse_util

from wsol_jax import config_lib, methods
from wsol_jax import train as train_cli
from wsol_jax.data import fractal, pipeline
from wsol_jax.methods.base import HEAD_NAMES, load_into
from wsol_jax.models import load_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(num_classes=8, train_per_class=6, val_per_class=2, test_per_class=2,
             min_size=40, max_size=48, num_points=2000, families=("ifs", "contour"))


def test_render_rate_is_printed_for_the_log(capsys):
  p = fractal.FractalParams(num_classes=8, families=("ifs", "contour"))
  rate = fractal.render_rate(p, count=100)
  with capsys.disabled():
    print(f"\nfractal render rate: {rate:.0f} images/s ({p.min_size}-{p.max_size} px, "
          f"{p.num_points} points, one thread)")
  assert rate > 0


def test_same_seed_same_images_other_categories_and_instances_differ():
  p = fractal.FractalParams(**SMALL)
  fractal.category.cache_clear()  # the cache must not be what makes two renders equal
  a, box_a = fractal.render(p, 1, 3)
  fractal.category.cache_clear()
  b, box_b = fractal.render(fractal.FractalParams(**SMALL), 1, 3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(box_a, box_b)
  other_seed, _ = fractal.render(fractal.FractalParams(**{**SMALL, "seed": 1}), 1, 3)
  assert other_seed.shape != a.shape or not np.array_equal(other_seed, a)
  images = {(k, i): fractal.render(p, k, i)[0] for k in range(8) for i in range(2)}
  keys = list(images)
  for m, u in enumerate(keys):
    for v in keys[m + 1:]:
      assert images[u].shape != images[v].shape or not np.array_equal(images[u], images[v]), (u, v)
  assert [p.family_of(k) for k in range(8)] == ["ifs"] * 4 + ["contour"] * 4


@pytest.mark.parametrize("family", fractal.FAMILIES)
def test_box_is_the_tight_box_of_the_drawn_pixels(family):
  p = fractal.FractalParams(**{**SMALL, "families": (family,)})
  for k, i in [(0, 0), (3, 7), (5, 2)]:
    image, box = fractal.render(p, k, i)
    h, w = image.shape[:2]
    assert image.dtype == np.uint8 and p.min_size <= min(h, w) <= max(h, w) <= p.max_size
    ys, xs = np.nonzero(image.any(axis=2))
    np.testing.assert_array_equal(box, [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    x0, y0, x1, y1 = box[0]
    assert fractal.MARGIN <= x0 and x1 <= w - fractal.MARGIN and fractal.MARGIN <= y0
    assert y1 <= h - fractal.MARGIN
    # object_scale: the longest side spans at least half of the free canvas side
    assert max(x1 - x0, y1 - y0) >= 0.5 * (min(h, w) - 2 * fractal.MARGIN) - 2


def _shape_feature(image, box):
  """The drawn pixels inside the box at 16x16, flip-invariant: shape only (no colour,
  position, scale or flip)."""
  x0, y0, x1, y1 = box[0].astype(int)
  crop = image[y0:y1, x0:x1].any(axis=2).astype(np.float32)
  f = cv2.resize(crop, (16, 16), interpolation=cv2.INTER_AREA)
  f = f + f[:, ::-1]
  return (f / (np.linalg.norm(f) + 1e-9)).ravel()


def test_classes_are_separable_by_their_shape():
  p = fractal.FractalParams(**{**SMALL, "num_classes": 10})
  feats = np.array([[_shape_feature(*fractal.render(p, k, i)) for i in range(12)]
                    for k in range(10)])
  means = feats[:, :8].mean(1)                       # class means of 8 instances
  held = feats[:, 8:].reshape(-1, feats.shape[-1])   # 4 held-out instances per class
  pred = np.argmin(((held[:, None] - means[None]) ** 2).sum(-1), axis=1)
  acc = float((pred == np.repeat(np.arange(10), 4)).mean())
  assert acc >= 0.6, acc  # chance: 0.1
  # and the class means themselves are far apart compared with an instance's spread
  between = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(10, dtype=bool)]
  assert between.min() > 0.1


def test_bad_params_fail_with_one_clear_line():
  with pytest.raises(ValueError, match="families must be a non-empty subset"):
    fractal.FractalParams(families=("mandelbrot",))
  with pytest.raises(ValueError, match=r"unknown data.fractal keys \['num_class'\]"):
    fractal.FractalParams.from_config({"num_class": 3})
  with pytest.raises(ValueError, match="splits"):
    fractal.FractalSource(fractal.FractalParams(**SMALL), "validation")


def test_the_source_through_the_real_pipelines():
  c = config_lib.load(str(ROOT / "configs/pretrain_fractal.py:smoke"))
  cfg = c.data
  cfg.fractal.update(SMALL)
  train = pipeline.make_source(cfg, "train")
  val = pipeline.make_source(cfg, "val")
  assert (len(train), len(val)) == (48, 16) and train.num_classes == 8
  ids = {train[i]["image_id"] for i in range(len(train))}
  assert not ids & {val[i]["image_id"] for i in range(len(val))}  # held-out instances
  assert train[13]["label"] == 2 and train[13]["boxes"].shape == (1, 4)
  n = jax.device_count()
  batch = next(pipeline.build_train_iterator(cfg, batch_size=2 * n, seed=0))
  assert batch["image"].shape == (2 * n, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(8))
  rows = list(pipeline.build_eval_iterator(cfg, "val", batch_size=n))
  assert sum(int(r["valid"].sum()) for r in rows) == 16
  assert rows[0]["boxes"].shape == (n, 1, 4) and (rows[0]["boxes"][:, 0, 2] > 0).all()


def _train(spec, workdir, *extra):
  assert train_cli.main(["--config", str(ROOT / spec), "--workdir", str(workdir), *extra]) == 0
  results = json.loads((workdir / "results.json").read_text())
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return results, rows


def _load(spec, export):
  """``spec``'s model variables (shapes only: no compilation) with ``export`` loaded into them
  by the path ``model.pretrained`` takes (``methods.base.load_into``): (loaded, kept keys)."""
  cfg = config_lib.load(str(ROOT / spec), [f"model.pretrained={export}"])
  method = methods.get_method(cfg)
  fresh = jax.eval_shape(method.init_fresh, jax.random.key(1))
  loaded, kept = load_into(fresh, cfg.model.pretrained)
  return traverse_util.flatten_dict(loaded, sep="/"), kept


def _check_backbone_loaded(spec, export):
  pretrained = traverse_util.flatten_dict(load_pretrained(export)[0], sep="/")
  loaded, kept = _load(spec, export)
  # every pretrained tensor but the head is loaded into the model; what keeps its fresh
  # init is the head (another class count or kind) and the method's own modules
  backbone = [k for k in pretrained if k.split("/")[1] not in HEAD_NAMES]
  assert backbone and all(np.array_equal(loaded[k], pretrained[k]) for k in backbone), spec
  assert kept and not set(kept) & set(backbone), (spec, kept)
  assert any(k.split("/")[1] in HEAD_NAMES for k in kept), (spec, kept)
  assert all(isinstance(loaded[k], jax.ShapeDtypeStruct) for k in kept), spec


@pytest.mark.slow
def test_vit_pretraining_smoke_exports_a_backbone_the_vit_methods_load(tmp_path):
  results, rows = _train("configs/pretrain_fractal.py:smoke", tmp_path / "vit")
  val = [r for r in rows if r["split"] == "val"]
  assert val and all("cls_top1" in r for r in val) and "test" not in results
  best = max(r["cls_top1"] for r in val)
  assert results["selected_step"] == next(r["step"] for r in val if r["cls_top1"] == best)
  export = tmp_path / "vit" / "export"
  pretrained, meta = load_pretrained(export)
  assert meta["method"] == "agcam" and pretrained["params"]["head"]["kernel"].shape[-1] == 8
  # the linear head (8 classes) is replaced: another class count, or TS-CAM's / SCM's
  # conv3x3 head, which the export lacks
  for name in ("tscam", "agcam", "scm", "vitol", "sat"):
    _check_backbone_loaded(f"configs/{name}_synthetic.py:smoke", export)


@pytest.mark.slow
def test_resnet_pretraining_smoke_exports_a_backbone_cam_loads(tmp_path):
  results, rows = _train("configs/pretrain_fractal.py:resnet,smoke", tmp_path / "resnet")
  assert results["final_step"] == 3 and any(r["split"] == "val" for r in rows)
  export = tmp_path / "resnet" / "export"
  pretrained, meta = load_pretrained(export)
  assert meta["method"] == "cam"
  for name in ("cam", "rfga"):
    _check_backbone_loaded(f"configs/{name}_synthetic.py:smoke", export)
