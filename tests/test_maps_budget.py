"""The maps' memory budget: chunked batches equal whole batches (maps, evaluator, explain)."""
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from wsol_jax import config_lib, explain, maps, sharding
from wsol_jax.eval import evaluator as evaluator_lib
from wsol_jax.maps import budget
from wsol_jax.models import save_pretrained
from wsol_jax.models.vit import VisionTransformer

ROOT = pathlib.Path(__file__).resolve().parents[1]
VIT = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5)
TINY_MB = 0.01  # far below what one image needs: as many chunks as there are rows


def _vit(head="linear"):
  model = VisionTransformer(**VIT, head=head)
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  return model, jax.jit(model.init)(jax.random.key(0), x), x


@pytest.mark.parametrize("head,kinds", [("linear", ("gar", "lrp", "agcam", "rollout")),
                                        ("conv3x3", ("tscam",))])
def test_chunked_maps_equal_the_whole_batch(head, kinds, caplog):
  model, variables, x = _vit(head)
  targets = jnp.array([0, 3, 1, 4])
  whole, logits = jax.jit(lambda v, x, t: maps.compute(model, v, x, kinds, t))(variables, x, targets)
  fn = maps.jitted(model, kinds, memory_mb=TINY_MB)
  with caplog.at_level(logging.WARNING, "wsol_jax.maps"):
    out, chunked_logits = fn(variables, x, targets)
  assert fn.plan(variables, x, targets) == 4  # one image per chunk, and still over: a warning
  assert "over the budget" in caplog.text
  np.testing.assert_allclose(chunked_logits, logits, rtol=1e-6, atol=1e-6)
  for kind in kinds:
    scale = np.abs(whole[kind]).max()
    # LRP's sums of signed contributions amplify float32 rounding (test_maps_compute).
    tol = 1e-4 if kind == "lrp" else 1e-6
    np.testing.assert_allclose(out[kind], whole[kind], atol=tol * scale, err_msg=kind)


def test_a_batch_that_fits_stays_whole():
  model, variables, x = _vit()
  # A generous budget keeps the batch whole; so does the automatic one for this tiny model.
  assert maps.jitted(model, ("rollout",), memory_mb=1000).plan(variables, x) == 1
  assert maps.jitted(model, ("rollout",)).plan(variables, x) == 1


def test_the_budget_picks_the_fewest_chunks_that_fit_and_keeps_the_sharding():
  model, variables, _ = _vit()
  x = jax.random.normal(jax.random.key(4), (32, 32, 32, 3))  # 4 images on each of 8 devices
  mesh = sharding.make_mesh()
  xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))

  def gar(v, images):
    return maps.compute(model, v, images, ("gar",))

  whole = budget.compiled_bytes(jax.jit(gar).lower(variables, xs).compile())
  halves = budget.compiled_bytes(jax.jit(budget.chunked(gar, 2)).lower(variables, xs).compile())
  assert halves < whole  # XLA's memory analysis sees the smaller chunk
  fn = budget.Budgeted(gar, (halves + 1) / 2**20)
  out, _ = fn(variables, xs)
  assert fn.plan(variables, xs) == 2
  assert out["gar"].sharding.is_equivalent_to(xs.sharding, 3)
  ref, _ = jax.jit(gar)(variables, x)
  np.testing.assert_allclose(out["gar"], ref["gar"], atol=1e-6 * np.abs(ref["gar"]).max())
  assert budget.Budgeted(gar, (whole + 1) / 2**20).plan(variables, xs) == 1


def test_budget_values():
  assert budget.budget_bytes(3) == 3 * 2**20
  assert budget.budget_bytes(0) > 0  # automatic: from the device or the host
  with pytest.raises(ValueError, match="maps memory budget"):
    budget.budget_bytes(-1)


# -- the evaluator: the same metrics with and without chunks --------------------------------------
NUM_CLASSES = 6  # the synthetic dataset's


def _brightness_maps(variables, images, targets):
  maps_ = jax.image.resize(images.mean(-1), (images.shape[0], 8, 8), "linear") * variables["scale"]
  logits = jax.nn.one_hot(targets, NUM_CLASSES) + images.mean((1, 2, 3))[:, None]
  return maps_, logits


def test_the_evaluator_gives_the_same_metrics_in_chunks(tmp_path, caplog):
  results = []
  for memory_mb, want_chunks in ((0, 1), (TINY_MB, 2)):
    cfg = config_lib.load(f"{ROOT / 'configs/cam_synthetic.py'}:smoke",
                          [f"data.data_dir={tmp_path / 'tfds'}", "eval.batch_size=16",
                           f"eval.maps_memory_mb={memory_mb}"])
    ev = evaluator_lib.LocalizationEvaluator(
        _brightness_maps, lambda v, x: jnp.zeros((x.shape[0], NUM_CLASSES)), cfg.eval, cfg.data,
        "test", num_classes=NUM_CLASSES, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    variables = {"scale": jnp.float32(1.0)}
    caplog.clear()
    with caplog.at_level(logging.INFO, "wsol_jax.maps"):
      results.append(ev.evaluate(variables))
    assert ("over the budget" in caplog.text) == (want_chunks > 1)  # 16 rows / 8 devices = 2
    batch = next(iter(ev.iterator))
    arrays = sharding.global_batch({"image": batch["image"], "label": batch["label"]}, ev.mesh)
    assert ev._predict[False].plan(variables, arrays["image"], arrays["label"]) == want_chunks
  assert results[0].metrics == results[1].metrics
  np.testing.assert_array_equal(results[0].per_image.best_iou, results[1].per_image.best_iou)


# -- explain --------------------------------------------------------------------------------------
def test_explain_takes_a_budget(tmp_path):
  model = VisionTransformer(**VIT)
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
  save_pretrained(tmp_path / "model", {"params": dict(variables["params"])},
                  {"model": "deit_tiny_patch16_224", "family": "vit", "kwargs": VIT,
                   "num_classes": 5, "image_size": 32, "mean": mean, "std": std, "method": None})
  rng = np.random.default_rng(0)
  files = []
  for i in range(3):
    files.append(str(tmp_path / f"im{i}.png"))
    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(files[-1])
  explainer = explain.build_explainer(tmp_path / "model", "gar", memory_mb=TINY_MB)
  assert explain.explain(explainer, files, tmp_path / "out", batch_size=3) == 3
  x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR))
                for f in files])
  assert explainer.fn.plan(explainer.variables, x, None) == 3  # the batch of 3 ran in 3 chunks
  ref, _ = jax.jit(lambda v, x: maps.compute(model, v, maps.normalize_images(x, mean, std),
                                             ("gar",)))(variables, x)
  got = np.stack([np.load(tmp_path / "out" / f"im{i}.npy") for i in range(3)])
  np.testing.assert_allclose(got, ref["gar"], atol=1e-6 * np.abs(ref["gar"]).max())
  args = ["--checkpoint", "m", "--images", "a", "--out", "o", "--maps-memory-mb"]
  assert explain.parse_args(args + ["64"]).maps_memory_mb == 64
  with pytest.raises(SystemExit):
    explain.parse_args(args + ["-1"])
