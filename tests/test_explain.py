"""The explain CLI end to end on tiny saved models, and the overlay helpers of wsol_jax.viz."""
import csv

import jax
import numpy as np
import pytest
from PIL import Image

from wsol_jax import explain, maps, viz
from wsol_jax.models import save_pretrained
from wsol_jax.models.resnet import ResNet
from wsol_jax.models.vit import VisionTransformer

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
VIT = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5)


def _save_vit(path, method=None, **kw):
  kwargs = {**VIT, **kw}
  model = VisionTransformer(**kwargs)
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  variables = {"params": dict(variables["params"])}
  if method == "scm":  # SCM checkpoints carry the ADB parameters, which the backbone ignores
    variables["params"]["scm"] = {"adb_0": {"lambda": np.ones(1, np.float32),
                                            "beta": np.full(1, 0.5, np.float32)}}
  meta = {"model": "deit_tiny_patch16_224", "family": "vit", "kwargs": kwargs, "num_classes": 5,
          "image_size": 32, "mean": MEAN, "std": STD, "method": method}
  save_pretrained(path, variables, meta)
  return model, variables


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("models") / "vit"
  model, variables = _save_vit(path)
  return path, model, variables


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  """Three readable images of different sizes and modes, a corrupt file and a missing one."""
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / "rgb.png")
  Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8), "L").save(d / "gray.jpg")
  Image.fromarray(rng.integers(0, 256, (70, 33, 4), dtype=np.uint8), "RGBA").save(d / "alpha.png")
  (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
  return [str(d / n) for n in ("rgb.png", "corrupt.jpg", "gray.jpg", "missing.png", "alpha.png")]


SIZES = {"rgb": (50, 40), "gray": (64, 48), "alpha": (33, 70)}  # (W, H)


def _reference_maps(model, variables, files, kind, targets=None):
  """The same maps through maps.compute on the CLI's preprocessing."""
  x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR)) for f in files])
  out, logits = maps.compute(model, variables, maps.normalize_images(x, MEAN, STD), (kind,), targets)
  return np.asarray(out[kind]), np.asarray(logits)


def test_cli_writes_raw_maps_overlays_and_a_summary(vit_dir, image_files, tmp_path, capsys):
  path, model, variables = vit_dir
  out = tmp_path / "out"
  code = explain.main(["--checkpoint", str(path), "--method", "gar", "--images", *image_files,
                       "--out", str(out), "--batch-size", "2"])
  err = capsys.readouterr().err
  assert code == 0
  assert "corrupt.jpg" in err and "missing.png" in err and "explained 3 of 5" in err
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [f"{n}.{e}" for n in SIZES for e in ("npy", "png")] + ["summary.csv"])
  for name, size in SIZES.items():
    with Image.open(out / f"{name}.png") as im:
      assert im.size == size and im.mode == "RGB"
    assert np.load(out / f"{name}.npy").shape == (4, 4)
  readable = [image_files[i] for i in (0, 2, 4)]
  ref, logits = _reference_maps(model, variables, readable, "gar")
  got = np.stack([np.load(out / f"{n}.npy") for n in ("rgb", "gray", "alpha")])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
  rows = list(csv.DictReader(open(out / "summary.csv")))
  assert [r["name"] for r in rows] == ["rgb", "gray", "alpha"]
  assert [int(r["predicted"]) for r in rows] == list(np.argmax(logits, -1))
  assert [r["target"] for r in rows] == [r["predicted"] for r in rows]
  assert [(int(r["width"]), int(r["height"])) for r in rows] == list(SIZES.values())


def test_cli_target_and_default_batch(vit_dir, image_files, tmp_path):
  path, model, variables = vit_dir
  readable = [image_files[i] for i in (0, 2, 4)]
  assert explain.main(["--checkpoint", str(path), "--method", "agcam", "--images", *readable,
                       "--out", str(tmp_path), "--target", "3"]) == 0
  ref, _ = _reference_maps(model, variables, readable, "agcam", np.full(3, 3))
  np.testing.assert_allclose(np.stack([np.load(tmp_path / f"{n}.npy") for n in ("rgb", "gray", "alpha")]),
                             ref, rtol=1e-5, atol=1e-7)
  assert {r["target"] for r in csv.DictReader(open(tmp_path / "summary.csv"))} == {"3"}


def test_cli_bfloat16_maps_keep_the_float32_ranking(vit_dir, image_files, tmp_path):
  from scipy import stats
  path, model, variables = vit_dir
  readable = [image_files[i] for i in (0, 2, 4)]
  assert explain.main(["--checkpoint", str(path), "--method", "rollout", "--images", *readable,
                       "--out", str(tmp_path), "--dtype", "bfloat16", "--cpu-tuning", "off"]) == 0
  got = np.stack([np.load(tmp_path / f"{n}.npy") for n in ("rgb", "gray", "alpha")])
  ref, _ = _reference_maps(model, variables, readable, "rollout")
  assert not np.allclose(got, ref, rtol=1e-6, atol=0)  # it did run in bfloat16
  for a, b in zip(got.reshape(3, -1), ref.reshape(3, -1)):
    assert stats.spearmanr(a, b).statistic >= 0.95


@pytest.mark.parametrize("method", ["tscam", "scm"])
def test_cli_conv_head_models_default_to_their_method(tmp_path, image_files, method):
  model, variables = _save_vit(tmp_path / "model", method=method, head="conv3x3")
  explainer = explain.build_explainer(tmp_path / "model")
  assert explainer.kind == method
  assert explain.explain(explainer, image_files[:1], tmp_path / "out") == 1
  ref, _ = _reference_maps(model, variables, image_files[:1], method)
  # SCM's min-max of the attention sum amplifies rounding: compare relative to the map's scale.
  np.testing.assert_allclose(np.load(tmp_path / "out" / "rgb.npy"), ref[0], atol=1e-5 * np.abs(ref).max())


def test_cli_resnet_cam(tmp_path, image_files):
  kwargs = dict(layers=[1, 1, 1, 1], num_classes=4, output_stride=16)
  model = ResNet(**{**kwargs, "layers": (1, 1, 1, 1)})
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
  save_pretrained(tmp_path / "resnet", variables,
                  {"model": "resnet50", "family": "resnet", "kwargs": kwargs, "num_classes": 4,
                   "image_size": 64, "mean": MEAN, "std": STD, "method": None})
  assert explain.main(["--checkpoint", str(tmp_path / "resnet"), "--images", image_files[0],
                       "--out", str(tmp_path / "out")]) == 0
  assert np.load(tmp_path / "out" / "rgb.npy").shape == (4, 4)
  with Image.open(tmp_path / "out" / "rgb.png") as im:
    assert im.size == (50, 40)


def test_cli_failures(vit_dir, image_files, tmp_path, capsys):
  path, _, _ = vit_dir
  assert explain.main(["--checkpoint", str(path), "--images", image_files[1], image_files[3],
                       "--out", str(tmp_path / "a")]) == 1
  assert "explained 0 of 2" in capsys.readouterr().err
  assert explain.main(["--checkpoint", str(path), "--method", "cam", "--images", image_files[0],
                       "--out", str(tmp_path / "b")]) == 1
  assert "needs a resnet model" in capsys.readouterr().err
  assert explain.main(["--checkpoint", str(path), "--images", image_files[0], "--target", "7",
                       "--out", str(tmp_path / "c")]) == 1
  assert "not a class" in capsys.readouterr().err
  assert explain.main(["--checkpoint", str(tmp_path / "nothing"), "--images", image_files[0],
                       "--out", str(tmp_path / "d")]) == 1
  assert "not a wsol_jax model directory" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # a score-map threshold lies in [0, 1]
    explain.main(["--checkpoint", str(path), "--images", image_files[0], "--threshold", "7",
                  "--out", str(tmp_path / "e")])
  assert "--threshold is a score-map threshold in [0, 1], got 7.0" in capsys.readouterr().err


def test_output_names_are_unique():
  assert explain.output_names(["a/x.jpg", "b/x.png", "x", "c/x_1.jpg"]) == ["x", "x_1", "x_2", "x_1_1"]


def test_show_cam_on_image_and_box():
  image = np.full((30, 40, 3), 128, np.uint8)
  mask = np.zeros((30, 40))
  mask[5:15, 10:30] = 1.0
  out = viz.show_cam_on_image(image, mask)
  assert out.shape == (30, 40, 3) and out.dtype == np.uint8 and out.max() >= 254  # 255·1.0 truncates
  assert out[10, 20, 0] > out[10, 20, 2] and out[0, 0, 2] > out[0, 0, 0]  # jet: hot red, cold blue
  np.testing.assert_array_equal(viz.largest_contour_box(mask, 0.2), [10, 5, 30, 15])
  np.testing.assert_array_equal(viz.largest_contour_box(np.zeros((30, 40))), [0, 0, 0, 0])
  with pytest.raises(ValueError, match="does not match"):
    viz.show_cam_on_image(image, mask[:10])


def test_overlay_upsamples_to_the_original_size():
  image = np.zeros((45, 61, 3), np.uint8)
  raw = np.zeros((4, 4), np.float32)
  raw[1, 2] = 1.0
  picture, mask, box = viz.overlay(image, raw, "bicubic", threshold=0.5)
  assert picture.shape == (45, 61, 3) and mask.shape == (45, 61)
  assert mask.min() == 0 and mask.max() == 1
  x0, y0, x1, y1 = box
  assert x0 < 61 * 2.5 / 4 < x1 and y0 < 45 * 1.5 / 4 < y1
