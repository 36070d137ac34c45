"""TS-CAM and SCM maps of the conv-head golden model: golden parity, also through ``compute``."""
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from wsol_jax import maps
from wsol_jax.models import load_pretrained, model_from_meta


@pytest.fixture(scope="module")
def tscam_model(golden_vit_dir, golden_dir):
  """The golden ViT with the TS-CAM/SCM 3×3 conv head (weights_tscam_head.safetensors)."""
  variables, meta = load_pretrained(golden_vit_dir)
  head = load_file(str(golden_dir / "weights_tscam_head.safetensors"))
  params = dict(variables["params"])
  params["head"] = {"kernel": head["head.weight"].transpose(2, 3, 1, 0), "bias": head["head.bias"]}
  return model_from_meta(meta, head="conv3x3"), {"params": params}


@pytest.fixture(scope="module")
def captured(tscam_model, golden_inputs):
  model, variables = tscam_model
  fn = jax.jit(lambda v, x: model.apply(v, x, capture=("attn_cls", "semantic")))
  logits, aux = fn(variables, golden_inputs[0])
  return logits, aux["attn_cls"], aux["semantic"]


def test_tscam_matches_official(captured, golden_dir, golden_inputs):
  gold = np.load(golden_dir / "tscam.npz")
  logits, attn_cls, semantic = captured
  np.testing.assert_allclose(logits, gold["logits"], atol=1e-5)
  cams = maps.tscam_maps(attn_cls, semantic)
  assert cams.shape == (4, 10, 14, 14)
  np.testing.assert_allclose(cams, gold["cams"], atol=2e-7, rtol=0)  # fp64 3.5e-8 at scale 0.055
  # lib/cams_deit.py: the target class map, cv2 INTER_LINEAR to 224, then min-max.
  target_maps = maps.select_class(cams, golden_inputs[1])
  np.testing.assert_allclose(maps.to_image_size(target_maps, (224, 224), "tscam"), gold["map224"],
                             atol=5e-6, rtol=0)  # fp64 8.3e-7


def test_scm_matches_official(captured, golden_dir):
  gold = np.load(golden_dir / "scm.npz")
  _, attn_cls, semantic = captured
  f0 = maps.minmax(maps.attention_sum(attn_cls), axes=(-1,)).reshape(4, 1, 14, 14)
  np.testing.assert_allclose(f0, gold["eval_F0"], atol=5e-6, rtol=0)  # fp64 1.3e-6
  np.testing.assert_allclose(maps.scm_maps(attn_cls, semantic), gold["eval_maps"], atol=1e-5,
                             rtol=0)  # fp64 2.2e-6 at scale 1.7


def test_compute_returns_the_target_class_maps(tscam_model, captured, golden_inputs):
  model, variables = tscam_model
  images, targets = golden_inputs
  out, logits = jax.jit(lambda v, x, t: maps.compute(model, v, x, ("tscam", "scm", "rollout"), t))(
      variables, images, targets)
  _, attn_cls, semantic = captured
  np.testing.assert_allclose(out["tscam"], maps.select_class(maps.tscam_maps(attn_cls, semantic), targets),
                             atol=1e-7)
  np.testing.assert_allclose(out["scm"], maps.select_class(maps.scm_maps(attn_cls, semantic), targets),
                             atol=1e-6)
  assert out["rollout"].shape == (4, 14, 14)
  argmax, _ = maps.compute(model, variables, images[:2], ("tscam",))
  np.testing.assert_allclose(argmax["tscam"], maps.select_class(
      maps.tscam_maps(attn_cls[:, :2], semantic[:2]), np.argmax(logits[:2], -1)), atol=1e-6)


def test_tscam_kinds_need_the_conv_head(golden_vit_dir, golden_inputs):
  variables, meta = load_pretrained(golden_vit_dir)
  with pytest.raises(ValueError, match="conv3x3"):
    maps.compute(model_from_meta(meta), variables, golden_inputs[0][:1], ("tscam",))
