"""ViTOL p-ADL: golden parity of both branches (padl.npz, branch forced through u or the
module option), the official u -> branch rule, one draw per layer per step shared by the
batch (or per image), the 'dropout' RNG stream, identity in eval mode, jit.

Tolerance: the drop branch is exact (a 0/1 mask); the importance branch differs from the
official float32 run by the summation order of the mean (MANIFEST fp64 column 2.5e-7):
atol 2·2.5e-7 + 1e-7·scale.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wsol_jax.methods import base
from wsol_jax.methods.vitol import PadlConfig
from wsol_jax.models import padl as P

IMPORTANCE_ATOL = 2 * 2.5e-7 + 1e-7 * 2.63


@pytest.fixture(scope="module")
def golden(golden_dir):
  return np.load(golden_dir / "padl.npz")


def test_golden_parameters_are_the_config_defaults(golden):
  cfg = PadlConfig()
  assert (cfg.drop_rate, cfg.gamma) == (float(golden["drop_rate"]), float(golden["threshold"]))
  assert not cfg.per_example and cfg.enabled


@pytest.mark.parametrize("index,name", [(0, "out_importance"), (1, "out_drop")])
def test_golden_parity_with_the_forced_uniform_draw(golden, index, name):
  u = np.float32(golden["forced_u"][index])   # 0.10 -> importance, 0.60 -> drop
  out = np.asarray(jax.jit(P.padl, static_argnums=(2, 3))(
      golden["X"], u, float(golden["drop_rate"]), float(golden["threshold"])))
  if name == "out_drop":
    np.testing.assert_array_equal(out, golden[name])
  else:
    np.testing.assert_allclose(out, golden[name], rtol=0, atol=IMPORTANCE_ATOL)


@pytest.mark.parametrize("branch,name", [("importance", "out_importance"), ("drop", "out_drop")])
def test_golden_parity_with_the_forced_module_branch(golden, branch, name):
  module = P.PAdl(drop_rate=0.75, gamma=0.9, branch=branch)
  out = np.asarray(jax.jit(lambda x: module.apply({}, x, train=True))(golden["X"]))
  np.testing.assert_allclose(out, golden[name], rtol=0, atol=0 if branch == "drop" else IMPORTANCE_ATOL)


def test_components_follow_the_spec(golden):
  x = jnp.asarray(golden["X"])
  a = P.mean_embedding(x)
  assert a.shape == (4, 197, 1)
  np.testing.assert_allclose(P.importance_map(a), 1 / (1 + np.exp(-np.mean(golden["X"], -1, keepdims=True))),
                             rtol=1e-6)
  mask = np.asarray(P.drop_mask(a, 0.9))[..., 0]
  mean = np.asarray(a)[..., 0]
  np.testing.assert_array_equal(mask, mean < 0.9 * mean.max(axis=1, keepdims=True))
  assert 0 < mask.mean() < 1 and (mask[np.arange(4), mean.argmax(1)] == 0).all()  # max token dropped
  # The class token takes part in the mean and the max.
  x2 = x.at[:, 0].set(100.0)
  assert np.asarray(P.drop_mask(P.mean_embedding(x2), 0.9))[:, 1:].all()


def test_drop_mask_is_strict_and_uses_gamma_times_max_even_when_negative():
  a = jnp.asarray([[[-2.0], [-1.0], [-0.9], [-0.5]]])       # γ·max = -0.45 > max: all dropped
  np.testing.assert_array_equal(P.drop_mask(a, 0.9)[0, :, 0], [1, 1, 1, 1])
  a = jnp.asarray([[[1.0], [0.9], [0.5]]])                    # 0.9 is not < 0.9·1.0
  np.testing.assert_array_equal(P.drop_mask(a, 0.9)[0, :, 0], [0, 0, 1])


def test_branch_rule_is_floor_of_u_plus_drop_rate():
  u = jnp.asarray([0.0, 0.1, 0.2499, 0.25, 0.6, 0.999999], jnp.float32)
  np.testing.assert_array_equal(P.branch_indicator(u, 0.75), [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(P.branch_indicator(u, 0.0), [0] * 6)
  np.testing.assert_array_equal(P.branch_indicator(u, 1.0), [1] * 6)


def _classify(out: np.ndarray, x: np.ndarray, gamma: float = 0.9) -> np.ndarray:
  """Per image: 0 if out is the importance branch of x, 1 if the drop branch."""
  a = P.mean_embedding(jnp.asarray(x))
  imp = np.asarray(x * P.importance_map(a))
  drop = np.asarray(x * P.drop_mask(a, gamma))
  is_imp = np.all(np.isclose(out, imp, atol=1e-6), axis=(1, 2))
  is_drop = np.all(out == drop, axis=(1, 2))
  assert np.all(is_imp ^ is_drop), "every image must be exactly one branch"
  return is_drop.astype(int)


@pytest.mark.parametrize("per_example", [False, True])
def test_random_branch_frequency_and_batch_sharing(golden, per_example):
  x = golden["X"]
  module = P.PAdl(per_example=per_example)
  run = jax.jit(jax.vmap(lambda key: module.apply({}, x, train=True, rngs={"dropout": key})))
  outs = np.asarray(run(jax.random.split(jax.random.key(0), 400)))
  branches = np.stack([_classify(o, x) for o in outs])                # (400, B)
  if per_example:
    assert (branches.min(1) != branches.max(1)).any()                 # images differ in a batch
  else:
    assert (branches.min(1) == branches.max(1)).all()                 # one draw per batch
  assert abs(branches.mean() - 0.75) < 0.06


def test_identity_in_eval_mode_and_needs_the_dropout_stream(golden):
  x = jnp.asarray(golden["X"])
  module = P.PAdl()
  assert module.apply({}, x, train=False) is x
  with pytest.raises(Exception, match="dropout"):
    module.apply({}, x, train=True)


class _TwoLayers(nn.Module):
  """Two p-ADL layers in a row, like two transformer blocks."""

  @nn.compact
  def __call__(self, x, train):
    factory = P.post_block_factory()
    y = factory(name="a")(x, train=train)
    return y, factory(name="b")(x, train=train)


def test_each_layer_draws_its_own_branch(golden):
  x = golden["X"]
  model = _TwoLayers()
  run = jax.jit(jax.vmap(lambda key: model.apply({}, x, train=True, rngs={"dropout": key})))
  a, b = run(jax.random.split(jax.random.key(1), 200))
  ba = np.array([_classify(np.asarray(o), x)[0] for o in a])
  bb = np.array([_classify(np.asarray(o), x)[0] for o in b])
  assert (ba != bb).any() and abs(ba.mean() - 0.75) < 0.1 and abs(bb.mean() - 0.75) < 0.1


def test_gradient_flows_through_the_importance_map_only():
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))

  def f(x, z):
    return jnp.sum(P.apply_branch(x, z) ** 2)
  g_drop = jax.grad(f)(x, 1.0)
  mask = P.drop_mask(P.mean_embedding(x), 0.9)
  np.testing.assert_allclose(g_drop, 2 * x * mask, rtol=1e-6)     # the mask is a constant
  g_imp = jax.grad(f)(x, 0.0)
  s = jax.nn.sigmoid(jnp.mean(x, -1, keepdims=True))
  expected = 2 * x * s * s + jnp.sum(2 * x * x * s, -1, keepdims=True) * s * (1 - s) / x.shape[-1]
  np.testing.assert_allclose(g_imp, expected, rtol=1e-5)


def test_config_section_and_factory():
  cfg = base.read_section(ml_collections.ConfigDict(
      {"padl": {"enabled": True, "drop_rate": 0.5, "gamma": 0.8, "per_example": True}}),
      "padl", PadlConfig)
  assert (cfg.drop_rate, cfg.gamma, cfg.per_example) == (0.5, 0.8, True)
  kwargs = dict(drop_rate=cfg.drop_rate, gamma=cfg.gamma, per_example=cfg.per_example)
  layer = P.post_block_factory(**kwargs)(name="post")
  assert (layer.drop_rate, layer.gamma, layer.per_example, layer.name) == (0.5, 0.8, True, "post")
  assert P.post_block_factory(**kwargs) == P.post_block_factory(**kwargs)
  with pytest.raises(ValueError, match="unknown padl config keys"):
    base.read_section(ml_collections.ConfigDict({"padl": {"rate": 0.5}}), "padl", PadlConfig)
  with pytest.raises(ValueError, match="drop_rate"):
    PadlConfig(drop_rate=1.5)
  with pytest.raises(ValueError, match="branch"):
    P.PAdl(branch="nope").apply({}, jnp.ones((1, 2, 3)), train=True)
