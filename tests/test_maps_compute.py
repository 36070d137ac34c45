"""compute(): shared passes, one backward per batch, batch independence, targets, compilation."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax import maps
from wsol_jax.maps import attention
from wsol_jax.models import load_pretrained, model_from_meta
from wsol_jax.models.resnet import ResNet
from wsol_jax.models.vit import VisionTransformer

VIT_KINDS = ("rollout", "rollout_half", "gar", "agcam", "agcam_nostopgrad")


@pytest.fixture(scope="module")
def golden_model(golden_vit_dir):
  variables, meta = load_pretrained(golden_vit_dir)
  return model_from_meta(meta), variables


@pytest.fixture(scope="module")
def tiny_vit():
  model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=5)
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  return model, jax.jit(model.init)(jax.random.key(0), x), x


@pytest.fixture(scope="module")
def golden_all_kinds(golden_model, golden_inputs):
  model, variables = golden_model
  images, targets = golden_inputs
  return jax.jit(lambda v, x, t: maps.compute(model, v, x, VIT_KINDS, t))(variables, images, targets)


def test_compute_equals_the_single_kind_functions(golden_model, golden_inputs, golden_all_kinds):
  model, variables = golden_model
  images, targets = golden_inputs
  out, logits = golden_all_kinds
  assert sorted(out) == sorted(VIT_KINDS) and all(m.shape == (4, 14, 14) for m in out.values())
  single = {
      "rollout": maps.rollout(model, variables, images),
      "rollout_half": maps.rollout(model, variables, images, normalization="half"),
      "gar": maps.gar(model, variables, images, targets),
      "agcam": maps.agcam(model, variables, images, targets),
      "agcam_nostopgrad": maps.agcam(model, variables, images, targets, stop_gradient=False),
  }
  for kind, (raw, lg) in single.items():
    np.testing.assert_allclose(out[kind], raw, rtol=1e-5, atol=1e-6 * np.abs(raw).max(), err_msg=kind)
    np.testing.assert_allclose(lg, logits, atol=1e-5)


def test_batch_of_four_equals_four_batches_of_one(golden_model, golden_inputs, golden_all_kinds):
  model, variables = golden_model
  images, targets = golden_inputs
  batched, _ = golden_all_kinds
  one = jax.jit(lambda v, x, t: maps.compute(model, v, x, VIT_KINDS, t))
  for i in range(4):
    out, _ = one(variables, images[i:i + 1], targets[i:i + 1])
    for kind in VIT_KINDS:
      scale = np.abs(batched[kind][i]).max()
      np.testing.assert_allclose(out[kind][0], batched[kind][i], atol=1e-5 * scale, err_msg=kind)


@pytest.mark.parametrize("head,kinds", [("linear", ("lrp", "gar")), ("conv3x3", ("tscam", "scm"))])
def test_lrp_and_semantic_kinds_are_batch_independent(head, kinds):
  model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                            num_classes=5, head=head)
  x = jax.random.normal(jax.random.key(3), (3, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  fn = maps.jitted(model, kinds)
  batched, logits = fn(variables, x)
  # LRP divides relevance by sums of signed contributions, which amplifies float32
  # rounding: against a float64 evaluation of this model, the float32 batch's LRP map is
  # off by up to 4e-5 of its maximum (the batch and the single image round differently
  # in XLA's batched dots). Mixing images would be off by O(1).
  rel_tol = {"lrp": 1e-4}
  for i in range(3):
    out, _ = fn(variables, x[i:i + 1], jnp.argmax(logits[i:i + 1], -1))
    for kind in kinds:
      scale = np.abs(batched[kind][i]).max()
      np.testing.assert_allclose(out[kind][0], batched[kind][i],
                                 atol=rel_tol.get(kind, 1e-5) * scale, err_msg=kind)


def test_cam_batch_of_four_equals_four_batches_of_one():
  model = ResNet(layers=(1, 1, 1, 1), num_classes=5, output_stride=16)
  x = jax.random.normal(jax.random.key(2), (4, 64, 64, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  fn = jax.jit(lambda v, x: maps.compute(model, v, x, ("cam",)))
  batched, logits = fn(variables, x)
  assert batched["cam"].shape == (4, 4, 4)
  for i in range(4):
    out, lg = fn(variables, x[i:i + 1])
    np.testing.assert_allclose(out["cam"][0], batched["cam"][i], atol=1e-6)
    assert int(np.argmax(lg[0])) == int(np.argmax(logits[i]))


def _per_image_gradient(model, variables, image, target, rows, stop_gradient):
  """∂y_t/∂A for ONE image with its own jax.grad (the reference for the batched backward)."""
  n = 17
  def logit(delta):
    logits, _ = model.apply(variables, image[None], attn_delta=delta[:, None],
                            stop_grad_attn_input=stop_gradient)
    return logits[0, target]
  return jax.grad(logit)(jnp.zeros((model.depth, model.num_heads, rows, n)))


@pytest.mark.parametrize("grad_rows,stop_gradient", [("all", False), ("cls", True), ("cls", False)])
def test_one_backward_gives_every_images_own_gradient(tiny_vit, grad_rows, stop_gradient):
  model, variables, x = tiny_vit
  targets = jnp.array([4, 0, 2])
  rows = 17 if grad_rows == "all" else 1
  batched = jax.jit(lambda v, x, t: attention.attention_pass(
      model, v, x, t, grad_rows=grad_rows, stop_gradient=stop_gradient))
  per_image = jax.jit(jax.vmap(
      lambda im, t: _per_image_gradient(model, variables, im, t, rows, stop_gradient)))
  p = batched(variables, x, targets)
  assert p.grads.shape == (3, 3, 2, rows, 17)
  ref = per_image(x, targets)  # (B, L, H, rows, N)
  np.testing.assert_allclose(p.grads, jnp.moveaxis(ref, 0, 1), atol=1e-6)
  # targets=None: the argmax of the same forward picks each image's cotangent.
  q = batched(variables, x, None)
  np.testing.assert_array_equal(q.targets, np.argmax(q.logits, -1))
  ref = per_image(x, q.targets)
  np.testing.assert_allclose(q.grads, jnp.moveaxis(ref, 0, 1), atol=1e-6)


def test_lrp_kind_reuses_the_plain_gradients_and_matches_hila(golden_vit_dir, golden_dir, golden_inputs):
  from wsol_jax.maps import lrp
  variables, meta = load_pretrained(golden_vit_dir)
  model = model_from_meta(meta, final_norm_eps=1e-5)  # hila's ViT_LRP
  images, targets = golden_inputs
  out, logits = jax.jit(lambda v, x, t: maps.compute(model, v, x, ("lrp", "gar"), t))(
      variables, images, targets)
  gold = np.load(golden_dir / "lrp.npz")
  np.testing.assert_allclose(logits, gold["logits"], atol=1e-5)
  # LRP is the most rounding-sensitive map: fp64 column 7.3e-7 at scale 4.0e-4 (1.8e-3 relative).
  np.testing.assert_allclose(out["lrp"].reshape(4, 196), gold["raw"], atol=2e-6, rtol=0)
  np.testing.assert_allclose(out["lrp"], np.load(golden_dir / "vitol.npz")["lrp_raw"],
                             atol=2e-6, rtol=0)
  with jax.enable_x64(True):  # ViTOL protocol: cv2 INTER_CUBIC in float64 + normalize_scoremap
    map224 = np.asarray(maps.to_image_size(np.asarray(out["lrp"], np.float64), (224, 224), "lrp"))
  np.testing.assert_allclose(map224, gold["map224_vitol"], atol=5e-3, rtol=0)  # fp64 1.5e-3
  own = jax.jit(lambda v, x, t: lrp.transformer_attribution(model, v, x, t))(variables, images, targets)
  np.testing.assert_allclose(out["lrp"], own, atol=1e-8)


def test_kinds_share_passes(tiny_vit, monkeypatch):
  model, variables, x = tiny_vit
  calls = []
  real = attention.attention_pass

  def spy(*args, **kwargs):
    calls.append((kwargs.get("grad_rows"), kwargs.get("stop_gradient", False), kwargs.get("capture")))
    return real(*args, **kwargs)

  monkeypatch.setattr(attention, "attention_pass", spy)
  cases = {
      ("rollout",): [(None, False, ("attn",))],
      ("gar", "rollout", "agcam_nostopgrad"): [("all", False, ("attn", "scores_cls"))],
      ("agcam_nostopgrad",): [("cls", False, ("scores_cls",))],
      ("rollout", "agcam"): [("cls", True, ("attn", "scores_cls"))],
      ("gar", "agcam"): [("all", False, ("attn",)), ("cls", True, ("scores_cls",))],
  }
  for kinds, want in cases.items():
    calls.clear()
    maps.compute(model, variables, x, kinds)
    assert calls == want, kinds


def test_every_pass_uses_the_first_passs_targets(tiny_vit):
  model, variables, x = tiny_vit
  out, logits = maps.compute(model, variables, x, ("gar", "agcam"))
  t = np.argmax(logits, -1)
  np.testing.assert_allclose(out["agcam"], maps.agcam(model, variables, x, t)[0], atol=1e-6)
  np.testing.assert_allclose(out["gar"], maps.gar(model, variables, x, t)[0], atol=1e-6)


def test_lrp_rides_on_the_gradient_pass_forward(tiny_vit):
  """LRP and GAR share ONE forward: its exact GELU (``erf``, absent from the backward) runs
  once per block."""
  model, variables, x = tiny_vit
  for kinds in (("lrp",), ("lrp", "gar", "rollout")):
    jaxpr = str(jax.make_jaxpr(lambda v, x: maps.compute(model, v, x, kinds))(variables, x))
    assert len(re.findall(r"\berf\b", jaxpr)) == model.depth, kinds


def test_jitted_compiles_once_per_shape(tiny_vit):
  model, variables, x = tiny_vit
  fn = maps.jitted(model, ("gar", "agcam"))
  a, _ = fn(variables, x, jnp.array([0, 1, 2]))
  b, _ = fn(jax.tree_util.tree_map(lambda p: p * 1.01, variables), x + 1, jnp.array([2, 2, 2]))
  assert fn._cache_size() == 1 and a["gar"].shape == b["gar"].shape == (3, 4, 4)


def test_errors(tiny_vit):
  model, variables, x = tiny_vit
  with pytest.raises(ValueError, match="unknown map kind"):
    maps.compute(model, variables, x, ("gradcam",))
  with pytest.raises(ValueError, match="needs a resnet model"):
    maps.compute(model, variables, x, ("cam",))
  with pytest.raises(ValueError, match="kinds is empty"):
    maps.compute(model, variables, x, ())
  with pytest.raises(ValueError, match=r"targets must have shape \(B,\)"):
    maps.compute(model, variables, x, ("gar",), jnp.array([1, 2]))
  with pytest.raises(ValueError, match="integer"):
    maps.compute(model, variables, x, ("agcam",), jnp.array([1.0, 2.0, 0.0]))
