"""AG-CAM: golden parity with and without the official stop-gradient."""
import jax
import numpy as np
import pytest

from wsol_jax import maps
from wsol_jax.models import load_pretrained, model_from_meta


@pytest.fixture(scope="module")
def timm_model(golden_vit_dir):
  """The golden ViT as AG-CAM's vendored timm 0.6.8 builds it (every LayerNorm eps 1e-6)."""
  variables, meta = load_pretrained(golden_vit_dir)
  return model_from_meta(meta), variables


@pytest.fixture(scope="module")
def golden(golden_dir):
  return np.load(golden_dir / "agcam.npz")


def _map224(raw):
  """localization.py: bilinear (align_corners=False) upsample to 224, then min-max."""
  return np.asarray(maps.to_image_size(raw, (224, 224), "agcam"))


@pytest.mark.parametrize("stop_gradient,suffix", [(True, ""), (False, "_nostopgrad")])
def test_agcam_matches_official(timm_model, golden, golden_inputs, stop_gradient, suffix):
  model, variables = timm_model
  images, targets = golden_inputs
  fn = jax.jit(lambda v, x, t: maps.agcam(model, v, x, t, stop_gradient=stop_gradient))
  raw, logits = fn(variables, images, targets)
  assert raw.shape == (4, 14, 14)
  np.testing.assert_allclose(logits, golden["logits"], atol=1e-5)
  # fp64 columns: raw 5.7e-7 / 3.5e-7 at scale 0.7, map224 1.05e-6 / 8.1e-7.
  np.testing.assert_allclose(raw, golden["raw" + suffix], atol=2e-6, rtol=0)
  np.testing.assert_allclose(_map224(raw), golden["map224" + suffix], atol=5e-6, rtol=0)


def test_argmax_targets_are_the_official_prediction(timm_model, golden, golden_inputs):
  model, variables = timm_model
  images, _ = golden_inputs
  raw, logits = jax.jit(lambda v, x: maps.agcam(model, v, x))(variables, images)
  np.testing.assert_array_equal(np.argmax(logits, -1), golden["prediction"])
  given, _ = maps.agcam(model, variables, images, golden["prediction"])
  np.testing.assert_allclose(raw, given, atol=1e-6)  # jit vs eager rounding


def test_stop_gradient_leaves_the_last_layer_unchanged():
  # Spec §11.7: the last layer's gradient is the same with and without the stop-gradient.
  from wsol_jax.models.vit import VisionTransformer
  model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=5)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  a = maps.attention_pass(model, variables, x, grad_rows="cls", stop_gradient=True)
  b = maps.attention_pass(model, variables, x, grad_rows="cls")
  np.testing.assert_allclose(a.grads[-1], b.grads[-1], atol=1e-7)
  assert np.abs(a.grads[0] - b.grads[0]).max() > 1e-4
