"""ViT/DeiT: golden timm parity, attention auxiliaries, hook-free attention gradients, errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax.models import create_model, load_pretrained, model_from_meta
from wsol_jax.models.vit import CAPTURE_NAMES, VisionTransformer

TINY = dict(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=5)


@pytest.fixture(scope="module")
def golden_model(golden_vit_dir):
  variables, meta = load_pretrained(golden_vit_dir)
  return model_from_meta(meta), variables, meta


def test_golden_logits_and_every_layer_attention(golden_model, golden_inputs, golden_dir):
  model, variables, meta = golden_model
  images, _ = golden_inputs
  gold = np.load(golden_dir / "timm_vit.npz")
  logits, aux = jax.jit(lambda v, x: model.apply(v, x, capture=("attn", "attn_cls")))(variables, images)
  np.testing.assert_allclose(logits, gold["logits"], atol=1e-5, rtol=0)
  assert aux["attn"].shape == (4, 4, 3, 197, 197)
  np.testing.assert_allclose(aux["attn"][:, 0], gold["attn_img0"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(aux["attn_cls"], gold["attn_cls"], atol=1e-6, rtol=0)
  assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
  assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_golden_logits_and_attention_with_the_cpu_wing(golden_model, golden_inputs, golden_dir):
  from wsol_jax import cpu
  model, variables, _ = golden_model
  model = dataclasses.replace(model, **cpu.runtime(cpu.plan("on")).model_overrides(type(model)))
  assert model.attention_fn is not None and model.block_boundary is not None
  gold = np.load(golden_dir / "timm_vit.npz")
  logits, aux = jax.jit(lambda v, x: model.apply(v, x, capture=("attn", "attn_cls")))(
      variables, golden_inputs[0])
  np.testing.assert_allclose(logits, gold["logits"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(aux["attn"][:, 0], gold["attn_img0"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(aux["attn_cls"], gold["attn_cls"], atol=1e-6, rtol=0)


def test_capture_does_not_change_logits_and_has_documented_shapes(golden_model, golden_inputs):
  model, variables, _ = golden_model
  images = golden_inputs[0][:2]
  plain, aux0 = model.apply(variables, images)
  assert aux0 == {}
  full, aux = model.apply(variables, images, capture=CAPTURE_NAMES[:-1])
  np.testing.assert_array_equal(plain, full)
  assert aux["attn"].shape == aux["scores"].shape == (4, 2, 3, 197, 197)
  assert aux["attn_cls"].shape == aux["scores_cls"].shape == (4, 2, 3, 197)
  assert aux["tokens"].shape == (2, 197, 192) and aux["pre_logits"].shape == (2, 192)
  np.testing.assert_allclose(aux["attn"].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(aux["scores"], -1), aux["attn"], atol=1e-6)


def test_batch_of_four_equals_four_batches_of_one(golden_model, golden_inputs):
  model, variables, _ = golden_model
  images = golden_inputs[0]
  fwd = jax.jit(lambda v, x: model.apply(v, x, capture=("attn_cls",)))
  logits, aux = fwd(variables, images)
  for i in range(4):
    li, ai = fwd(variables, images[i:i + 1])
    np.testing.assert_allclose(li[0], logits[i], atol=1e-5)
    np.testing.assert_allclose(ai["attn_cls"][:, 0], aux["attn_cls"][:, i], atol=1e-6)


def _tiny(**kw):
  model = VisionTransformer(**{**TINY, **kw})
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  return model, variables, x


def _logit_of_delta(model, variables, x, cls, **flags):
  def f(delta):
    logits, _ = model.apply(variables, x, attn_delta=delta, **flags)
    return logits[:, cls].sum()
  return f


def test_attention_gradient_matches_finite_differences():
  model, variables, x = _tiny()
  n = (32 // 8) ** 2 + 1
  zeros = jnp.zeros((3, 2, 2, n, n), jnp.float32)
  f = _logit_of_delta(model, variables, x, 1)
  grad = jax.grad(f)(zeros)
  assert grad.shape == zeros.shape
  rng = np.random.default_rng(0)
  eps = 1e-2
  for _ in range(8):
    idx = tuple(int(rng.integers(s)) for s in zeros.shape)
    e = zeros.at[idx].set(eps)
    fd = (f(e) - f(-e)) / (2 * eps)
    np.testing.assert_allclose(fd, grad[idx], rtol=2e-2, atol=2e-4)


def test_class_row_delta_gives_the_class_row_of_the_full_gradient():
  model, variables, x = _tiny()
  n = 17
  full = jax.grad(_logit_of_delta(model, variables, x, 2))(jnp.zeros((3, 2, 2, n, n)))
  row = jax.grad(_logit_of_delta(model, variables, x, 2))(jnp.zeros((3, 2, 2, 1, n)))
  np.testing.assert_allclose(row[:, :, :, 0], full[:, :, :, 0], atol=1e-6)


@pytest.mark.parametrize("delta_rows", [None, 1, 17])
def test_class_row_capture_is_the_attention_row_with_the_same_gradient(delta_rows):
  # ``attn_cls`` is evaluated on its own (so that its gradient skips the full softmax
  # backward); values and parameter gradients must be those of ``attn[..., 0, :]``.
  model, variables, x = _tiny()
  rng = np.random.default_rng(1)
  weights = jnp.asarray(rng.standard_normal((3, 2, 2, 17)), jnp.float32)
  delta = None
  if delta_rows is not None:
    delta = 0.01 * jnp.asarray(rng.standard_normal((3, 2, 2, delta_rows, 17)), jnp.float32)

  def row_of(name):
    def f(params):
      _, aux = model.apply({"params": params}, x, capture=(name,), attn_delta=delta)
      return aux["attn_cls"] if name == "attn_cls" else aux["attn"][:, :, :, 0]
    return f

  np.testing.assert_allclose(row_of("attn_cls")(variables["params"]),
                             row_of("attn")(variables["params"]), atol=1e-7, rtol=0)
  grads = [jax.grad(lambda p, f=row_of(name): jnp.sum(weights * f(p)))(variables["params"])
           for name in ("attn_cls", "attn")]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-6 * max(1.0, float(np.abs(b).max())), rtol=0)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[0])) > 1e-3


def test_stop_gradient_flag_changes_earlier_layers_only():
  model, variables, x = _tiny()
  zeros = jnp.zeros((3, 2, 2, 17, 17))
  plain = jax.grad(_logit_of_delta(model, variables, x, 0))(zeros)
  stopped = jax.grad(_logit_of_delta(model, variables, x, 0, stop_grad_attn_input=True))(zeros)
  np.testing.assert_allclose(stopped[-1], plain[-1], atol=1e-7)
  for layer in range(2):
    assert np.abs(stopped[layer] - plain[layer]).max() > 1e-4
  # The forward itself is unchanged.
  a, _ = model.apply(variables, x)
  b, _ = model.apply(variables, x, stop_grad_attn_input=True)
  np.testing.assert_array_equal(a, b)


def test_forward_compiles_once_per_shape():
  model, variables, x = _tiny()
  traces = []

  @jax.jit
  def fwd(v, images):
    traces.append(1)
    return model.apply(v, images, capture=("attn",))

  fwd(variables, x)
  other = jax.tree_util.tree_map(lambda p: p + 1.0, variables)
  fwd(other, x)
  fwd(variables, x + 1.0)
  assert len(traces) == 1
  fwd(variables, x[:1])
  assert len(traces) == 2


def test_training_mode_drop_path_and_dropout_use_the_rng():
  model, variables, x = _tiny(drop_path_rate=0.5, drop_rate=0.1)
  ev, _ = model.apply(variables, x)
  t1, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  t2, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  t3, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(4)})
  np.testing.assert_array_equal(t1, t2)
  assert np.abs(t1 - ev).max() > 1e-4 and np.abs(t1 - t3).max() > 1e-4


def test_conv_head_semantic_maps_follow_input_size_and_use_pytorch_default_init():
  model = create_model("deit_tiny_patch16_224", depth=2, num_classes=7, head="conv3x3")
  x = jnp.zeros((1, 224, 224, 3))
  variables = model.init(jax.random.key(0), x)
  kernel = variables["params"]["head"]["kernel"]
  assert kernel.shape == (3, 3, 192, 7)
  bound = 1 / np.sqrt(9 * 192)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  assert np.abs(variables["params"]["head"]["bias"]).max() <= bound
  np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3), rtol=0.05)
  logits, aux = model.apply(variables, jnp.ones((2, 288, 160, 3)), capture=("semantic",))
  assert aux["semantic"].shape == (2, 18, 10, 7)
  np.testing.assert_allclose(logits, aux["semantic"].mean((1, 2)), atol=1e-6)


@pytest.mark.parametrize("name,dim,heads", [("deit_tiny_patch16_224", 192, 3),
                                            ("deit_small_patch16_224", 384, 6),
                                            ("deit_base_patch16_224", 768, 12),
                                            ("vit_base_patch16_224", 768, 12)])
def test_registered_architectures(name, dim, heads):
  model = create_model(name)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))["params"]
  assert shapes["blocks_11"]["attn"]["qkv"]["kernel"].shape == (dim, 3 * dim)
  assert shapes["pos_embed"].shape == (1, 197, dim) and "blocks_12" not in shapes
  assert model.num_heads == heads and shapes["head"]["kernel"].shape == (dim, 1000)


@pytest.mark.parametrize("shape,match", [
    ((32, 32, 3), "rank 4"),
    ((1, 3, 32, 32), "NCHW"),
    ((1, 32, 32, 1), "channels"),
    ((1, 30, 32, 3), "multiple of the patch size"),
])
def test_bad_images_give_clear_errors(shape, match):
  model, variables, _ = _tiny()
  with pytest.raises(ValueError, match=match):
    model.apply(variables, jnp.zeros(shape))


def test_bad_capture_delta_and_model_name_give_clear_errors():
  model, variables, x = _tiny()
  with pytest.raises(ValueError, match="unknown capture names"):
    model.apply(variables, x, capture=("attention",))
  with pytest.raises(ValueError, match="attn_delta must have shape"):
    model.apply(variables, x, attn_delta=jnp.zeros((3, 2, 2, 16, 16)))
  with pytest.raises(ValueError, match="did you mean"):
    create_model("deit_smal_patch16_224")
  with pytest.raises(ValueError, match="unknown vit model options"):
    create_model("deit_small_patch16_224", n_layers=3)

