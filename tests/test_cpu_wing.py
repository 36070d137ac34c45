"""The XLA:CPU wing (wsol_jax.cpu): off, the models are plain XLA; on, the same numbers.

A GPU/TPU runs the models with the wing off, which is what these tests check on the CPU
backend: the train step's jaxpr has no ``while`` (the gradient barrier), no FFI call (the
kernels) and no custom VJP of the wing (the barrier, the xᵀ·g matmul, the kernels' VJPs).
"""
import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend.core import jaxprs_in_params

from wsol_jax import config_lib, cpu, trainer
from wsol_jax.cpu import vjp
from wsol_jax.methods import get_method
from wsol_jax.runtime import Runtime

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "wsol_jax"
WING_VJPS = {"_barrier_bwd", "_matmul_bwd", "_attention_bwd"}


def _config(method: str):
  c = config_lib.base_config()
  c.method = method
  c.model.update(dict(name="deit_tiny_patch16_224", num_classes=5, drop_path_rate=0.1,
                      kwargs=dict(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=3)))
  c.data.image_size = 32
  c.scm.update(dict(num_blocks=2, iterations=(5, 3)))
  return c


def _primitives(jaxpr, out=None):
  """(primitive names, custom-VJP backward names) of a jaxpr and all its sub-jaxprs."""
  names, bwds = out if out is not None else (set(), set())
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    if "bwd" in eqn.params:
      core = str(eqn.params["bwd"]).rpartition("Core: ")[2].split()[0]
      bwds.add(core)
    for sub in jaxprs_in_params(eqn.params):
      _primitives(sub, (names, bwds))
  return names, bwds


def _step_and_batch(method_name: str, runtime: Runtime):
  method = get_method(_config(method_name), runtime)
  tx = optax.sgd(0.1)
  state = trainer.init_state(method, tx, seed=0)
  step = trainer.make_train_step(method, tx, optax.constant_schedule(0.1))
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=0, maxval=255)
  batch = {"image": images, "label": jnp.array([1, 3], jnp.int32)}
  return method, step, state, batch


@pytest.mark.parametrize("method_name", ["tscam", "scm", "vitol"])
def test_wing_off_train_step_is_plain_xla_and_on_gives_the_same_loss_and_gradients(method_name):
  runtimes = {"off": cpu.runtime(cpu.plan("off")), "on": cpu.runtime(cpu.plan("on"))}
  assert runtimes["off"].model_impls == {} and runtimes["off"].compiler_options == {}
  results = {}
  for setting, runtime in runtimes.items():
    method, step, state, batch = _step_and_batch(method_name, runtime)
    names, _ = _primitives(jax.make_jaxpr(step)(state, batch).jaxpr)
    rng = jax.random.key(7)
    forward = jax.make_jaxpr(lambda v: method.loss(v, batch, rng)[0])(trainer.variables_of(state))
    _, bwds = _primitives(forward.jaxpr)
    if setting == "off":
      assert "while" not in names and "ffi_call" not in names and "custom_call" not in names
      assert not bwds & WING_VJPS
      assert bwds <= {"_diffuse_bwd"}  # SCM's low-rank-aware VJP is backend-neutral math
    else:
      assert {"while", "ffi_call"} <= names and {"_barrier_bwd", "_matmul_bwd"} <= bwds
    images = trainer.postprocess.normalize_images(batch["image"], method.mean, method.std)
    grad = jax.jit(jax.value_and_grad(lambda v: method.loss(v, {**batch, "image": images}, rng)[0]))
    results[setting] = grad(trainer.variables_of(state))
  (loss_off, g_off), (loss_on, g_on) = results["off"], results["on"]
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g_on), jax.tree_util.tree_leaves(g_off)):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(1.0, float(jnp.abs(b).max())))


def test_plan_by_setting_and_device_count():
  assert jax.device_count() == 8  # conftest: 8 fake CPU devices
  off = cpu.plan("off")
  assert not any((off.dots, off.weight_gradients, off.block_boundary, off.attention))
  auto = cpu.plan("auto")  # several devices: an FFI call has no sharding rule
  assert auto.weight_gradients and auto.block_boundary and not auto.attention
  assert not auto.newton_schulz
  on = cpu.plan("on")
  assert on.attention and on.newton_schulz
  choices = cpu.runtime(on).choices
  assert choices["attention"] == choices["newton_schulz"] == "cpu_kernel"
  assert choices["cpu_tuning"] == "on" and choices["block_boundary"] == "gradient_barrier"
  with pytest.raises(config_lib.ConfigError, match="cpu_tuning must be one of"):
    cpu.plan("fast")


def test_on_fails_clearly_where_the_kernels_do_not_build(monkeypatch):
  monkeypatch.setattr(cpu, "_kernels_unavailable", lambda: "no compiler here")
  with pytest.raises(config_lib.ConfigError, match="cpu_tuning='on'.*no compiler here"):
    cpu.plan("on")


def test_auto_on_one_device_falls_back_with_a_notice(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  monkeypatch.setattr(cpu, "_kernels_unavailable", lambda: "scipy-openblas32 is missing")
  p = cpu.plan("auto")
  assert not p.attention and not p.newton_schulz and p.weight_gradients
  assert any("scipy-openblas32 is missing" in n for n in p.notes)


def test_describe_records_what_ran():
  ran = cpu.runtime(cpu.plan("auto")).describe()
  assert ran["backend"] == "cpu" and ran["device_count"] == 8 and ran["dtype"] == "float32"
  assert ran["attention"] == "xla" and ran["weight_gradients"] == "x^T.g"
  assert Runtime().describe()["cpu_tuning"] == "off"


def test_exported_metadata_holds_no_injected_implementation():
  method = get_method(_config("scm"), cpu.runtime(cpu.plan("on")))
  meta = method.export_meta()
  assert meta["family"] == "scm"
  assert not {"attention_fn", "dot_general", "block_boundary", "newton_schulz_steps"} & set(
      meta["kwargs"])


def _imports(path: pathlib.Path) -> set[str]:
  """Every module a file imports, at any depth (function-level imports included)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def test_import_rules_models_methods_wing_and_the_box_miners():
  entry_points = {"train.py", "evaluate.py", "explain.py"}
  for path in PACKAGE.rglob("*.py"):
    rel = path.relative_to(PACKAGE)
    imports = _imports(path)
    if rel.parts[0] == "models":
      assert not any(m.startswith("wsol_jax.methods") for m in imports), rel
    if rel.parts[0] != "cpu" and str(rel) not in entry_points:
      assert not any(m == "wsol_jax.cpu" or m.startswith("wsol_jax.cpu.") for m in imports), rel
  # The box miners: boxes calls components, components imports only their shared type.
  components = _imports(PACKAGE / "eval" / "components.py")
  assert not {"wsol_jax.eval.boxes", "wsol_jax.eval.boxes.ThresholdBoxes"} & components


def test_gradient_barrier_is_an_identity_that_survives_compilation():
  x = jax.random.normal(jax.random.key(0), (2, 5, 4))
  w = jax.random.normal(jax.random.key(1), (2, 5, 4))
  f = lambda x: jnp.sum(jnp.sin(vjp.gradient_barrier(x)) * w)
  np.testing.assert_array_equal(vjp.gradient_barrier(x), x)
  np.testing.assert_allclose(jax.grad(f)(x), jnp.cos(x) * w, rtol=1e-6)
  # Injected as the ViT's block boundary, the backward keeps one while loop per barrier:
  # XLA cannot fuse the residual-gradient chain across blocks (which made XLA:CPU
  # recompute it O(depth²) times).
  method = get_method(_config("tscam"), Runtime(model_impls={"block_boundary": vjp.gradient_barrier}))
  variables = method.init(jax.random.key(0))
  images = jnp.zeros((2, 32, 32, 3))
  loss = lambda p: method.model.apply({"params": p}, images)[0].sum()
  hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
  assert hlo.count(" while(") >= method.model.depth


@pytest.mark.parametrize("x_shape", [(6, 4), (2, 5, 4)])
def test_dot_general_vjp_is_autodiff_with_the_weight_gradient_as_x_transpose_g(x_shape):
  from wsol_jax.models import layers
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), (4, 3))
  c = jax.random.normal(jax.random.key(2), x_shape[:-1] + (3,))

  def matmul(x, w):
    return layers.matmul(x, w, vjp.dot_general)
  ours = jax.grad(lambda x, w: jnp.sum(jnp.tanh(matmul(x, w)) * c), argnums=(0, 1))(x, w)
  plain = jax.grad(lambda x, w: jnp.sum(jnp.tanh(x @ w) * c), argnums=(0, 1))(x, w)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The weight gradient is one dot with x on the left, contracting the rows of both.
  # (Autodiff's rule gives g on the left and a (3, 4) product, which XLA:CPU lowers with a
  # transposing copy of g.)
  text = jax.jit(jax.grad(lambda w: jnp.sum(matmul(x, w) * c))).lower(w).as_text()
  rows = int(np.prod(x_shape[:-1]))
  assert "contracting_dims = [0] x [0]" in text
  assert f"(tensor<{rows}x4xf32>, tensor<{rows}x3xf32>) -> tensor<4x3xf32>" in text
  # nn.Dense's other products fall back to lax.dot_general.
  dims = (((0,), (0,)), ((), ()))
  np.testing.assert_allclose(vjp.dot_general(x.reshape(-1, 4), x.reshape(-1, 4), dims),
                             x.reshape(-1, 4).T @ x.reshape(-1, 4), rtol=1e-5)
