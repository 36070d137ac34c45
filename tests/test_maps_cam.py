"""CAM: wsolevaluation ResNetCam parity at output strides 16 and 8; 1×1-conv class maps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax import maps
from wsol_jax.models import load_pretrained, model_from_meta


@pytest.fixture(scope="module")
def golden(golden_resnet_dir, golden_dir):
  variables, meta = load_pretrained(golden_resnet_dir)
  return variables, meta, np.load(golden_dir / "resnet.npz")


@pytest.mark.parametrize("output_stride,prefix,grid", [(16, "os16_", 14), (8, "os8_", 28)])
def test_cam_matches_wsolevaluation(golden, golden_inputs, output_stride, prefix, grid):
  variables, meta, gold = golden
  images, targets = golden_inputs
  model = model_from_meta(meta, output_stride=output_stride)
  raw, logits = jax.jit(lambda v, x, t: maps.cam(model, v, x, t))(variables, images, targets)
  assert raw.shape == (4, grid, grid)
  np.testing.assert_allclose(logits, gold[f"{prefix}logits"], atol=2e-5, rtol=0)
  # fp64 column 3-4e-9 at scale 2e-3 (features agree to 2e-4 at scale 23-33).
  np.testing.assert_allclose(raw, gold[f"{prefix}cams"], atol=5e-8, rtol=0)
  via_compute, _ = maps.compute(model, variables, images, ("cam",), targets)
  np.testing.assert_allclose(via_compute["cam"], raw, atol=1e-8)  # eager vs jit


def test_cam_argmax_targets(golden, golden_inputs):
  variables, meta, _ = golden
  model = model_from_meta(meta, output_stride=16)
  raw, logits = maps.cam(model, variables, golden_inputs[0][:2])
  given, _ = maps.cam(model, variables, golden_inputs[0][:2], np.argmax(logits, -1))
  np.testing.assert_array_equal(raw, given)


def test_class_maps_of_a_1x1_conv_head():
  features = jax.random.normal(jax.random.key(0), (2, 5, 4, 8))
  kernel = jax.random.normal(jax.random.key(1), (1, 1, 8, 3))
  bias = jnp.arange(3.0)
  out = maps.class_maps(features, kernel, bias)
  assert out.shape == (2, 3, 5, 4)
  conv = jax.lax.conv_general_dilated(features, kernel, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=jax.lax.Precision.HIGHEST) + bias
  np.testing.assert_allclose(out, conv.transpose(0, 3, 1, 2), atol=1e-5)
  # The wsolevaluation CAM of a class is that class's bias-free map divided by the channel count.
  t = jnp.array([2, 0])
  np.testing.assert_allclose(maps.cam_from_features(features, kernel[0, 0], t),
                             maps.select_class(maps.class_maps(features, kernel), t) / 8, atol=1e-6)


def test_cam_needs_an_fc_resnet(golden, golden_inputs):
  variables, meta, _ = golden
  model = model_from_meta(meta, head="none")
  with pytest.raises(ValueError, match="'fc' head"):
    maps.cam(model, variables, golden_inputs[0][:1])
