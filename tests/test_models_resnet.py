"""ResNet-50: timm parity, wsolevaluation output strides 16/8 and their CAMs, BatchNorm modes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax.models import create_model, load_pretrained, model_from_meta
from wsol_jax.models.layers import BatchNorm

CAPTURE = ("stem", "layer1", "layer2", "layer3", "features")


@pytest.fixture(scope="module")
def golden(golden_resnet_dir, golden_dir):
  variables, meta = load_pretrained(golden_resnet_dir)
  return variables, meta, np.load(golden_dir / "resnet.npz")


def _forward(meta, variables, images, output_stride):
  model = model_from_meta(meta, output_stride=output_stride)
  return jax.jit(lambda v, x: model.apply(v, x, capture=CAPTURE))(variables, images)


def test_output_stride_32_matches_timm(golden, golden_inputs):
  variables, meta, gold = golden
  logits, aux = _forward(meta, variables, golden_inputs[0], 32)
  np.testing.assert_allclose(logits, gold["logits"], atol=2e-5, rtol=0)
  np.testing.assert_allclose(aux["features"], gold["features"].transpose(0, 2, 3, 1), atol=2e-4, rtol=0)
  for name in ("stem", "layer1", "layer2", "layer3"):
    np.testing.assert_allclose(aux[name].mean((1, 2)), gold[f"{name}_mean"], atol=2e-5, rtol=0)
  assert "batch_stats" in variables and variables["batch_stats"]["bn1"]["var"].shape == (64,)


@pytest.mark.parametrize("output_stride,prefix,grid", [(16, "os16_", 14), (8, "os8_", 28)])
def test_wsolevaluation_strides_and_cams(golden, golden_inputs, output_stride, prefix, grid):
  variables, meta, gold = golden
  images, targets = golden_inputs
  logits, aux = _forward(meta, variables, images, output_stride)
  features = aux["features"]
  assert features.shape == (4, grid, grid, 2048)
  np.testing.assert_allclose(logits, gold[f"{prefix}logits"], atol=2e-5, rtol=0)
  np.testing.assert_allclose(features, gold[f"{prefix}features"].transpose(0, 2, 3, 1), atol=2e-4, rtol=0)
  # wsolevaluation CAM: mean over channels of fc.weight[target, c] * features[c].
  weights = variables["params"]["fc"]["kernel"][:, targets]  # (2048, B)
  cams = np.einsum("bhwc,cb->bhw", features, weights) / 2048
  np.testing.assert_allclose(cams, gold[f"{prefix}cams"], atol=1e-7, rtol=0)


def test_batchnorm_train_mode_matches_pytorch_statistics():
  x = jax.random.normal(jax.random.key(0), (4, 5, 3, 6)) * 2 + 1
  bn = BatchNorm()
  variables = bn.init(jax.random.key(1), x, train=False)
  variables = {"params": {"scale": jnp.arange(1.0, 7.0), "bias": jnp.full((6,), 0.5)},
               "batch_stats": {"mean": jnp.full((6,), 0.2), "var": jnp.full((6,), 3.0)}}
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  xs = np.asarray(x).reshape(-1, 6).astype(np.float64)
  mean, var = xs.mean(0), xs.var(0)
  expect = (xs - mean) / np.sqrt(var + 1e-5) * np.arange(1.0, 7.0) + 0.5
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 6), expect, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.9 * 0.2 + 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 * 3.0 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
  y_eval = bn.apply(variables, x, train=False)
  expect_eval = (xs - 0.2) / np.sqrt(3.0 + 1e-5) * np.arange(1.0, 7.0) + 0.5
  np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 6), expect_eval, atol=1e-5)


def test_train_mode_updates_running_statistics_and_eval_uses_them(golden, golden_inputs):
  variables, meta, _ = golden
  model = model_from_meta(meta)
  images = golden_inputs[0][:2]
  (logits_t, _), updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  logits_e, _ = model.apply(variables, images)
  assert np.abs(logits_t - logits_e).max() > 1e-3
  old, new = variables["batch_stats"]["bn1"]["mean"], updates["batch_stats"]["bn1"]["mean"]
  assert np.abs(np.asarray(new) - old).max() > 0
  assert jax.tree_util.tree_structure(updates["batch_stats"]) == jax.tree_util.tree_structure(
      jax.tree_util.tree_map(jnp.asarray, variables["batch_stats"]))


def test_resnet50_architecture_and_errors():
  model = create_model("resnet50", num_classes=200, output_stride=16)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  params = shapes["params"]
  assert {k for k in params if k.startswith("layer4_")} == {"layer4_0", "layer4_1", "layer4_2"}
  assert params["layer3_5"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
  assert params["layer4_0"]["downsample_conv"]["kernel"].shape == (1, 1, 1024, 2048)
  assert params["fc"]["kernel"].shape == (2048, 200)
  n_params = sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
  assert n_params == 23_917_832  # torchvision resnet50 with a 200-class fc
  with pytest.raises(ValueError, match="NCHW"):
    model.apply(shapes, jnp.zeros((1, 3, 64, 64)))
  with pytest.raises(ValueError, match="output_stride"):
    create_model("resnet50", output_stride=4).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
