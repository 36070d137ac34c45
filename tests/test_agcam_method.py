"""AG-CAM method: golden parity of the model and its maps (agcam.npz, with and without the
official stop-gradient; rollout and LRP baselines), the configs, and an end-to-end CLI
run (training, export, explain for every map kind, 0-epoch evaluation of a given model).

Tolerances: float32 rounding of the MANIFEST fp64 column (AG-CAM raw 5.7e-7 at scale
0.71); LRP relative 1e-2 (MANIFEST: ~1e-3 float32 vs float64; the official LRP model's
final LayerNorm eps 1e-5 vs timm's 1e-6 here).
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from wsol_jax import config_lib, explain, methods
from wsol_jax import train as train_cli
from wsol_jax.maps import postprocess
from wsol_jax.models import load_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]


def golden_config(pretrained, stop_gradient=True):
  c = config_lib.base_config()
  c.method = "agcam"
  c.model.name = "deit_tiny_patch16_224"
  c.model.num_classes = 10
  c.model.kwargs = dict(depth=4)
  c.model.drop_path_rate = 0.0
  c.model.pretrained = str(pretrained)
  c.data.image_size = 224
  c.agcam.stop_gradient = stop_gradient
  return c


@pytest.fixture(scope="module")
def golden_method(golden_vit_dir):
  m = methods.get_method(golden_config(golden_vit_dir))
  return m, m.init(jax.random.key(0))


def test_model_and_class_attributes(golden_method):
  m, _ = golden_method
  assert type(m).__name__ == "AgCam" and m.section_config.stop_gradient
  assert m.model.head == "linear" and m.model.final_norm_eps is None and m.model.post_block is None
  assert (m.map_kinds, m.upsample, m.eval_protocols) == (("agcam", "rollout", "lrp"), "bilinear", ("agcam",))
  assert [m.compute_kind(k) for k in (None, "agcam", "rollout", "lrp")] == [
      "agcam", "agcam", "rollout_half", "lrp"]
  with pytest.raises(ValueError, match="map kind"):
    m.compute_kind("gar")


def test_golden_maps_with_the_cpu_wing(golden_vit_dir, golden_dir, golden_inputs):
  """AG-CAM's gradients pass the wing's matmul VJP and gradient barriers (the CLIs' choice on
  a CPU): the same golden numbers as plain XLA."""
  from wsol_jax import cpu
  m = methods.get_method(golden_config(golden_vit_dir), cpu.runtime(cpu.plan("on")))
  variables = m.init(jax.random.key(0))
  images, targets = golden_inputs
  g = np.load(golden_dir / "agcam.npz")
  raw, logits = jax.jit(m.maps)(variables, images, targets)
  np.testing.assert_allclose(raw, g["raw"], rtol=0, atol=2e-6)
  np.testing.assert_allclose(logits, g["logits"], rtol=0, atol=1e-6)


def test_golden_logits_and_maps(golden_method, golden_vit_dir, golden_dir, golden_inputs):
  m, variables = golden_method
  images, targets = golden_inputs
  g = np.load(golden_dir / "agcam.npz")
  np.testing.assert_allclose(m.predict(variables, images), g["logits"], rtol=0, atol=1e-6)
  fn = jax.jit(m.maps, static_argnames="kind")
  raw, logits = fn(variables, images, targets)
  np.testing.assert_allclose(raw, g["raw"], rtol=0, atol=2e-6)
  np.testing.assert_allclose(logits, g["logits"], rtol=0, atol=1e-6)
  # AG-CAM's localization explains the predicted class: targets=None is the argmax.
  pred, _ = fn(variables, images, None)
  np.testing.assert_array_equal(np.argmax(logits, -1), g["prediction"])
  np.testing.assert_allclose(pred, fn(variables, images, jnp.asarray(g["prediction"]))[0], atol=0)
  # The upsampled, min-max normalised map (localization.py lines 114-121).
  map224 = postprocess.resize_and_normalize(raw, (224, 224), m.upsample)
  np.testing.assert_allclose(map224, g["map224"], rtol=0, atol=1e-5)
  # Without the stop-gradient (config.agcam.stop_gradient=False): plain autograd.
  plain = methods.get_method(golden_config(golden_vit_dir, stop_gradient=False))
  assert plain.compute_kind(None) == "agcam_nostopgrad"
  raw_plain, _ = jax.jit(plain.maps)(variables, images, targets)
  np.testing.assert_allclose(raw_plain, g["raw_nostopgrad"], rtol=0, atol=2e-6)
  assert np.abs(np.asarray(raw_plain) - g["raw"]).max() > 0.1


def test_golden_baselines(golden_method, golden_dir, golden_inputs):
  m, variables = golden_method
  images, targets = golden_inputs
  fn = jax.jit(m.maps, static_argnames="kind")
  rollout, _ = fn(variables, images, targets, kind="rollout")     # (Ā + I)/2 = row-normalised
  np.testing.assert_allclose(rollout, np.load(golden_dir / "vitol.npz")["rollout_raw"], rtol=0, atol=4e-8)
  lrp, _ = fn(variables, images, targets, kind="lrp")
  ref = np.load(golden_dir / "lrp.npz")["raw"].reshape(4, 14, 14)
  np.testing.assert_allclose(lrp, ref, rtol=0, atol=1e-2 * np.abs(ref).max())


def test_training_loss_is_plain_cross_entropy(golden_method, golden_inputs):
  m, variables = golden_method
  images, targets = golden_inputs
  batch = {"image": jnp.asarray(images[:2]), "label": jnp.asarray(targets[:2])}
  loss, aux = jax.jit(m.loss)(variables, batch, jax.random.key(0))
  logits = m.predict(variables, images[:2])
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(loss, -np.mean(np.asarray(logp)[np.arange(2), targets[:2]]), rtol=1e-6)
  assert set(aux["metrics"]) == {"loss", "accuracy"}


@pytest.mark.parametrize("spec,epochs,kind,stop", [
    ("agcam_ilsvrc.py", 0, "", True), ("agcam_ilsvrc.py:rollout", 0, "rollout", True),
    ("agcam_ilsvrc.py:nostopgrad", 0, "", False), ("agcam_cub.py", 20, "", True),
    ("agcam_cub.py:lrp,tfds", 20, "lrp", True)])
def test_configs(spec, epochs, kind, stop):
  c = config_lib.load(str(ROOT / "configs" / spec))
  assert (c.method, c.model.name, c.training.num_epochs) == ("agcam", "vit_base_patch16_224", epochs)
  assert (c.eval.map_kind, c.agcam.stop_gradient, c.eval.pixel_threshold) == (kind, stop, 0.5)
  m = methods.method_class(c.method)
  assert m.eval_protocols == ("agcam",)
  assert c.model.num_classes == (1000 if "ilsvrc" in spec else 200)
  from wsol_jax.models import registry
  assert registry.get_spec(c.model.name).mean == (0.5, 0.5, 0.5)


# ---- end to end ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("agcam_e2e")
  workdir = root / "run"
  assert train_cli.main(["--config", str(ROOT / "configs/agcam_synthetic.py:smoke"),
                         "--workdir", str(workdir), f"--config.data.data_dir={root / 'tfds'}"]) == 0
  return root, workdir


@pytest.mark.slow
def test_training_through_the_cli(trained):
  _, workdir = trained
  results = json.loads((workdir / "results.json").read_text())
  test = results["test"]
  assert 0 <= test["maxboxacc_v2"] <= 100
  assert {"abpc", "auc_lerf", "auc_morf"} <= set(test)
  if test["cls_top1"] > 0:  # pixel metrics count correctly classified images only
    assert {"agcam_pixel_acc", "agcam_iou", "agcam_dice", "agcam_precision", "agcam_recall"} <= set(test)
    assert test["agcam_num_correct"] == round(test["cls_top1"] * test["num_examples"] / 100)
  variables, meta = load_pretrained(workdir / "export")
  assert meta["method"] == "agcam" and meta["config"]["agcam"]["stop_gradient"] is True
  assert len(sorted((workdir / "overlays").glob("*.png"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["agcam", "rollout", "lrp"])
def test_export_works_with_the_explain_cli(trained, kind, tmp_path):
  _, workdir = trained
  cfg = config_lib.load(str(ROOT / "configs/agcam_synthetic.py:smoke"))
  m = methods.get_method(cfg)
  rng = np.random.default_rng(1)
  files = []
  for i, size in enumerate([(48, 40), (32, 32)]):
    files.append(tmp_path / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(files[-1])
  out = tmp_path / "out"
  assert explain.main(["--checkpoint", str(workdir / "export"), "--method", m.compute_kind(kind),
                       "--images", *map(str, files), "--out", str(out), "--target", "1"]) == 0
  got = np.stack([np.load(out / f"img{i}.npy") for i in range(2)])
  variables, _ = load_pretrained(workdir / "export")
  x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR))
                for f in files])
  ref, _ = m.maps(variables, postprocess.normalize_images(x, m.mean, m.std),
                  jnp.ones(2, jnp.int32), kind=kind)
  # LRP divides by near-zero relevance sums: float32 reordering between the CLI's jit and this
  # one moves its smallest values by ~1e-5 of the map's maximum.
  scale = (1e-4 if kind == "lrp" else 1e-6) * float(np.abs(ref).max())
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=scale)


@pytest.mark.slow
def test_zero_epochs_evaluates_the_given_model(trained, capsys):
  """agcam_ilsvrc's path: no training, export + evaluation of ``model.pretrained``."""
  root, workdir = trained
  run = root / "zero"
  assert train_cli.main(["--config", str(ROOT / "configs/agcam_synthetic.py:smoke"),
                         "--workdir", str(run), f"--config.data.data_dir={root / 'tfds'}",
                         f"--config.model.pretrained={workdir / 'export'}",
                         "--config.training.num_epochs=0"]) == 0
  assert "abpc" in capsys.readouterr().out
  results = json.loads((run / "results.json").read_text())
  assert results["final_step"] == 0
  given, _ = load_pretrained(workdir / "export")
  exported, _ = load_pretrained(run / "export")
  jax.tree_util.tree_map(np.testing.assert_array_equal, given, exported)
