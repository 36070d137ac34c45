"""Attention rollout and GAR: golden ViTOL parity and the row-vector rollout vs matrix products."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax import maps
from wsol_jax.maps.rollout import rollout_class_row
from wsol_jax.models import load_pretrained, model_from_meta


@pytest.fixture(scope="module")
def vitol_model(golden_vit_dir):
  """The golden ViT as ViTOL/hila build it (final LayerNorm eps 1e-5)."""
  variables, meta = load_pretrained(golden_vit_dir)
  return model_from_meta(meta, final_norm_eps=1e-5), variables


@pytest.fixture(scope="module")
def vitol(golden_dir):
  return np.load(golden_dir / "vitol.npz")


def _official_resize(raw):
  """ViTOL inference.py: cv2 INTER_CUBIC on the float64 map, then normalize_scoremap."""
  with jax.enable_x64(True):
    return np.asarray(maps.to_image_size(np.asarray(raw, np.float64), (224, 224), "gar"))


def test_rollout_matches_vitol(vitol_model, vitol, golden_inputs):
  model, variables = vitol_model
  raw, logits = jax.jit(lambda v, x: maps.rollout(model, v, x))(variables, golden_inputs[0])
  assert raw.shape == (4, 14, 14)
  np.testing.assert_allclose(logits, vitol["logits"], atol=1e-5)
  # fp64 column 4.9e-9 at scale 9e-3.
  np.testing.assert_allclose(raw, vitol["rollout_raw"], atol=2e-8, rtol=0)
  np.testing.assert_allclose(_official_resize(raw), vitol["rollout_map224"], atol=2e-5, rtol=0)


def test_gar_matches_vitol(vitol_model, vitol, golden_inputs):
  model, variables = vitol_model
  images, targets = golden_inputs
  raw, _ = jax.jit(lambda v, x, t: maps.gar(model, v, x, t))(variables, images, targets)
  # fp64 column 6.2e-9 at scale 2.8e-3.
  np.testing.assert_allclose(raw, vitol["gar_raw"], atol=2e-8, rtol=0)
  np.testing.assert_allclose(_official_resize(raw), vitol["gar_map224"], atol=2e-5, rtol=0)


def _random_attention(key, layers=3, batch=2, heads=2, n=10):
  return jax.nn.softmax(3 * jax.random.normal(key, (layers, batch, heads, n, n)), axis=-1)


def _matrix_rollout(fused, start_layer):
  """hila ``compute_rollout_attention`` literally, in float64: row 0 of the full product."""
  fused = np.asarray(fused, np.float64)
  eye = np.eye(fused.shape[-1])
  mats = [(a + eye) / (a + eye).sum(-1, keepdims=True) for a in fused]
  joint = mats[start_layer]
  for m in mats[start_layer + 1:]:
    joint = m @ joint
  return joint[:, 0]


@pytest.mark.parametrize("start_layer", [0, 1, 2])
def test_row_vector_rollout_equals_matrix_products(start_layer):
  fused = jnp.mean(_random_attention(jax.random.key(0)), axis=2)
  got = rollout_class_row(fused, start_layer)
  np.testing.assert_allclose(got, _matrix_rollout(fused, start_layer), atol=1e-6)
  np.testing.assert_allclose(np.sum(got, -1), 1.0, atol=1e-6)  # a product of stochastic matrices


def test_half_normalization_is_the_jacobgil_rollout():
  attn = _random_attention(jax.random.key(1))
  fused = np.asarray(jnp.mean(attn, axis=2), np.float64)
  eye = np.eye(fused.shape[-1])
  for b in range(fused.shape[1]):
    result = eye
    for a in fused[:, b]:  # vit_rollout: a = (A + I)/2; a / a.sum(dim=-1) (no keepdim); a @ result
      a = (a + eye) / 2
      result = (a / a.sum(-1)) @ result
    np.testing.assert_allclose(maps.attention_rollout(attn, normalization="half")[b], result[0, 1:],
                               atol=1e-6)
  # Row sums of (Ā + I)/2 are 1: the same numbers as the ViTOL rollout up to rounding.
  np.testing.assert_allclose(maps.attention_rollout(attn, normalization="half"),
                             maps.attention_rollout(attn), atol=1e-6)


def test_gar_with_unit_gradients_is_the_attention_rollout():
  attn = _random_attention(jax.random.key(2))
  np.testing.assert_allclose(maps.gradient_rollout(attn, jnp.ones_like(attn)),
                             maps.attention_rollout(attn), atol=1e-7)


def test_gar_clamps_after_the_product_then_averages_heads():
  attn = _random_attention(jax.random.key(3))
  grads = jax.random.normal(jax.random.key(4), attn.shape)
  fused = jnp.mean(jnp.maximum(grads * attn, 0), axis=2)
  np.testing.assert_allclose(maps.gradient_rollout(attn, grads), _matrix_rollout(fused, 0)[:, 1:],
                             atol=1e-6)


def test_rollout_rejects_bad_options():
  fused = jnp.zeros((3, 1, 5, 5))
  with pytest.raises(ValueError, match="normalization"):
    rollout_class_row(fused, normalization="cols")
  with pytest.raises(ValueError, match="start_layer"):
    rollout_class_row(fused, start_layer=3)
