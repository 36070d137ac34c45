"""The CPU wing's attention kernel (wsol_jax.cpu.attention) against XLA's attention."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsol_jax.cpu import attention as attention_cpu
from wsol_jax.models.vit import VisionTransformer, attention_core

TINY = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=5,
            head="conv3x3", drop_path_rate=0.1, drop_rate=0.1)


def _reference(qkv, heads):
  b, n, c3 = qkv.shape
  d = c3 // 3 // heads
  q, k, v = qkv.reshape(b, n, 3, heads, d).transpose(2, 0, 3, 1, 4)
  probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q * d ** -0.5, k), axis=-1)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, n, c3 // 3)
  return out, probs


@pytest.mark.parametrize("b,n,heads,d", [(2, 17, 3, 8), (1, 5, 1, 4), (3, 50, 2, 64)])
def test_forward_and_vjp_match_xla(b, n, heads, d):
  keys = jax.random.split(jax.random.key(b * n), 3)
  qkv = 2 * jax.random.normal(keys[0], (b, n, 3 * heads * d)) / d ** 0.25
  w_out = jax.random.normal(keys[1], (b, n, heads * d))
  w_probs = jax.random.normal(keys[2], (b, heads, n, n))
  for use_probs in (False, True):  # the probs cotangent: symbolic zero, then non-zero
    def loss(f, x):
      out, probs = f(x, heads)
      return (out * w_out).sum() + (use_probs * (probs * w_probs).sum() if use_probs else 0.0)
    got = jax.jit(jax.value_and_grad(lambda x: loss(attention_cpu.attention, x)))(qkv)
    want = jax.jit(jax.value_and_grad(lambda x: loss(_reference, x)))(qkv)
    core = jax.jit(jax.value_and_grad(lambda x: loss(attention_core, x)))(qkv)  # the ViT's
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=2e-5 * float(jnp.abs(want[1]).max()))
    np.testing.assert_allclose(core[1], want[1], atol=2e-5 * float(jnp.abs(want[1]).max()))
  out, probs = jax.jit(attention_cpu.attention, static_argnums=1)(qkv, heads)
  ref_out, ref_probs = _reference(qkv, heads)
  np.testing.assert_allclose(out, ref_out, atol=1e-5 * float(jnp.abs(ref_out).max()))
  np.testing.assert_allclose(probs, ref_probs, atol=1e-6)


def test_softmax_of_extreme_scores_underflows_to_zero_and_propagates_nan():
  qkv = np.zeros((1, 3, 3), np.float32)
  qkv[0, :, 0] = [1.0, 0.0, 0.0]    # q of token 0
  qkv[0, :, 1] = [0.0, 0.0, 200.0]  # k: token 2's score is 200 above the others
  out, probs = attention_cpu.attention(jnp.asarray(qkv), 1)
  np.testing.assert_array_equal(probs[0, 0, 0], [0.0, 0.0, 1.0])
  qkv[0, 1, 1] = np.nan
  _, probs = attention_cpu.attention(jnp.asarray(qkv), 1)
  assert np.isnan(np.asarray(probs)[0, 0, 0]).all()


def test_vit_with_the_kernel_matches_xla_in_training_and_captures():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  xla = VisionTransformer(**TINY)
  kern = dataclasses.replace(xla, attention_fn=attention_cpu.attention_fn)
  variables = xla.init(jax.random.key(0), x)

  def run(model):
    def loss(v):
      logits, aux = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)},
                                capture=("attn", "attn_cls"))
      return logits.sum() + aux["attn_cls"][:, :, :, 1:].sum() * 3.0, (logits, aux)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables)

  (l_k, (logits_k, aux_k)), g_k = run(kern)
  (l_x, (logits_x, aux_x)), g_x = run(xla)
  np.testing.assert_allclose(logits_k, logits_x, atol=1e-5)
  np.testing.assert_allclose(aux_k["attn"], aux_x["attn"], atol=1e-6)
  np.testing.assert_allclose(aux_k["attn_cls"], aux_x["attn_cls"], atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g_k), jax.tree_util.tree_leaves(g_x)):
    np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))
  hlo = jax.jit(lambda v: kern.apply(v, x, capture=("attn",))).lower(variables).as_text()
  assert attention_cpu.FORWARD in hlo
  # Outputs the kernel does not give (scores, attention deltas) use XLA's attention.
  hlo = jax.jit(lambda v: kern.apply(v, x, capture=("scores",))).lower(variables).as_text()
  assert attention_cpu.FORWARD not in hlo


def test_the_injected_core_falls_back_to_xla_for_other_dtypes():
  qkv = jax.random.normal(jax.random.key(0), (2, 9, 3 * 2 * 4)).astype(jnp.bfloat16)
  got, want = attention_cpu.attention_fn(qkv, 2), attention_core(qkv, 2)
  # The output in the input's dtype; the probabilities float32 (what maps read).
  assert got[0].dtype == want[0].dtype == jnp.bfloat16
  assert got[1].dtype == want[1].dtype == jnp.float32
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_a_failed_build_raises_with_the_compiler_output_and_leaves_no_library(tmp_path):
  lib = tmp_path / "k.so"
  with pytest.raises(attention_cpu.KernelBuildError, match="compiling .*attention.cc failed"):
    attention_cpu._compile(str(lib), "false")
  assert list(tmp_path.iterdir()) == []


def test_unavailable_gives_the_reason_when_the_kernel_cannot_build(monkeypatch):
  def fail():
    raise attention_cpu.KernelBuildError("no compiler here")
  monkeypatch.setattr(attention_cpu, "load", fail)
  attention_cpu.unavailable.cache_clear()
  try:
    assert attention_cpu.unavailable() == "no compiler here"
  finally:
    attention_cpu.unavailable.cache_clear()


def test_an_unwritable_cache_directory_is_a_build_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(attention_cpu.KernelBuildError, match="set WSOL_JAX_CACHE"):
    attention_cpu._compile(str(blocker / "kernels" / "k.so"), "c++")
