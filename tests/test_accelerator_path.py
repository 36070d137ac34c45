"""The accelerator path on the CPU backend: fused attention, bfloat16, FSDP meshes.

What a GPU/TPU run changes — ``model.fused_attn`` (``jax.nn.dot_product_attention``),
``model.dtype='bfloat16'``, ``mesh.axes=('data', 'fsdp')`` — checked against the reference
(explicit attention, float32, one device) on 8 fake CPU devices.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from wsol_jax import config_lib, optim, sharding, trainer
from wsol_jax.methods import get_method
from wsol_jax.runtime import Runtime

from test_cpu_wing import WING_VJPS, _primitives

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(method: str, **model):
  c = config_lib.base_config()
  c.method = method
  c.model.update(dict(name="deit_tiny_patch16_224", num_classes=5, drop_path_rate=0.0,
                      kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)))
  c.model.update(model)
  c.data.image_size = 32
  c.scm.update(dict(num_blocks=2, iterations=(5, 3)))
  c.sat.layers = 1  # SAT: the last block spatial-aware, the first a plain one
  return c


def _batch(n: int = 4, seed: int = 1):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 5, (n,)).astype(np.int32)}


def _loss_and_grads(method, variables, batch):
  from wsol_jax.maps import postprocess
  images = postprocess.normalize_images(jnp.asarray(batch["image"]), method.mean, method.std)
  b = {"image": images, "label": jnp.asarray(batch["label"])}
  fn = jax.jit(jax.value_and_grad(lambda v: method.loss(v, b, jax.random.key(3))[0]))
  return fn(variables)


@pytest.mark.parametrize("method_name", ["tscam", "scm", "vitol", "agcam", "sat"])
def test_fused_attention_gives_the_explicit_loss_gradients_and_predictions(method_name, monkeypatch):
  calls = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
  out = {}
  for fused in (False, True):
    method = get_method(_config(method_name, fused_attn=fused), Runtime())
    variables = method.init_fresh(jax.random.key(0))
    images = jnp.asarray(_batch()["image"]) / 255.0
    out[fused] = (*_loss_and_grads(method, variables, _batch()),
                  jax.jit(method.predict)(variables, images),
                  # Maps that read probabilities (or their gradients) take the explicit path;
                  # TS-CAM/SCM read only the class row, computed on its own.
                  jax.jit(lambda v, x: method.maps(v, x)[0])(variables, images))
  # The fused path ran in the training step and the prediction (every plain block).
  assert len(calls) >= 2 and all(s[2] == 2 for s in calls)  # (B, N, heads, d)
  (loss_e, g_e, p_e, m_e), (loss_f, g_f, p_f, m_f) = out[False], out[True]
  np.testing.assert_allclose(loss_f, loss_e, rtol=2e-6)
  for a, b in ((p_f, p_e), (m_f, m_e)):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * max(1.0, float(jnp.abs(b).max())))
  for a, b in zip(jax.tree_util.tree_leaves(g_f), jax.tree_util.tree_leaves(g_e)):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(1.0, float(jnp.abs(b).max())))


def test_bfloat16_compute_keeps_float32_parameters_state_and_loss():
  cfg = _config("tscam")
  losses = {}
  for dtype in ("float32", "bfloat16"):
    cfg.model.dtype = dtype
    method = get_method(cfg, Runtime())
    assert method.runtime.describe()["dtype"] == dtype
    tx = optax.adamw(1e-3)
    state = trainer.init_state(method, tx, seed=0)
    step = jax.jit(trainer.make_train_step(method, tx, optax.constant_schedule(1e-3)))
    rows = []
    for i in range(4):
      state, metrics = step(state, {k: jnp.asarray(v) for k, v in _batch(seed=i).items()})
      rows.append(float(metrics["loss"]))
      assert metrics["loss"].dtype == jnp.float32
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves((state["params"], state["opt_state"]))
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    logits = method.predict(trainer.variables_of(state), jnp.zeros((2, 32, 32, 3)))
    assert logits.dtype == jnp.float32
    losses[dtype] = rows
  # bfloat16 has an 8-bit mantissa: the losses of the first steps agree to ~1 %.
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


def test_bfloat16_parameters_when_asked():
  method = get_method(_config("vitol", param_dtype="bfloat16"), Runtime())
  params = method.init_fresh(jax.random.key(0))["params"]
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("method_name,kinds", [("tscam", (None,)), ("scm", (None,)),
                                               ("vitol", ("gar", "rollout", "lrp")),
                                               ("agcam", (None,))])
def test_bfloat16_maps_agree_with_float32(method_name, kinds):
  """The map methods run in the compute dtype; in bfloat16 their maps keep the float32 maps'
  ranking (the thresholds MaxBoxAccV2 sweeps): Spearman ρ ≥ 0.95 per image."""
  cfg = _config(method_name)
  images = jnp.asarray(_batch(8)["image"]) / 255.0
  for kind in kinds:
    maps = {}
    for dtype in ("float32", "bfloat16"):
      cfg.model.dtype = dtype
      method = get_method(cfg, Runtime())
      variables = method.init_fresh(jax.random.key(0))
      out, _ = jax.jit(lambda v, x: method.maps(v, x, kind=kind))(variables, images)
      maps[dtype] = np.asarray(out, np.float32)
    assert maps["bfloat16"].shape == maps["float32"].shape
    assert np.isfinite(maps["bfloat16"]).all()
    for a, b in zip(maps["bfloat16"].reshape(8, -1), maps["float32"].reshape(8, -1)):
      assert stats.spearmanr(a, b).statistic >= 0.95, (method_name, kind)


def _train_steps(cfg, mesh, steps=3):
  method = get_method(cfg, Runtime())
  sched = optim.make_schedule(cfg, 10, 1)
  params = jax.eval_shape(lambda: method.init_fresh(jax.random.key(0)))["params"]
  tx = optim.make_optimizer(cfg, sched, method.param_labels(params))
  abstract = jax.eval_shape(lambda: trainer.init_state(method, tx, 0))
  shardings = sharding.state_shardings(abstract, mesh)
  state = jax.jit(lambda: trainer.init_state(method, tx, 0), out_shardings=shardings)()
  step = trainer.jit_train_step(trainer.make_train_step(method, tx, sched), mesh, Runtime(),
                                shardings)
  losses = []
  for i in range(steps):
    state, metrics = step(state, sharding.global_batch(_batch(16, seed=i), mesh))
    losses.append(float(metrics["loss"]))
  return losses, state, shardings


@pytest.mark.parametrize("method_name", ["tscam", "scm"])
def test_fsdp_meshes_give_the_losses_and_parameters_of_one_device(method_name):
  cfg = _config(method_name)
  cfg.model.kwargs = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=4)
  cfg.optimizer.update(dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4))
  one = sharding.make_mesh(devices=jax.devices()[:1])
  ref_losses, ref_state, _ = _train_steps(cfg, one)
  for shape, axes in (((2, 4), ("data", "fsdp")), ((8,), ("fsdp",))):
    cfg.mesh.update(dict(shape=shape, axes=axes))
    mesh = sharding.mesh_from_config(cfg.mesh)
    losses, state, shardings = _train_steps(cfg, mesh)
    # The large kernels and their momentum are split over the fsdp devices.
    sharded = [p for p, s in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(shardings))
               if "fsdp" in jax.tree_util.tree_leaves(tuple(s.spec))]
    assert len(sharded) >= 2 * 2 * 4  # qkv, proj, fc1, fc2 of 2 blocks, parameters + momentum
    assert state["params"]["blocks_0"]["mlp"]["fc1"]["kernel"].sharding.shard_shape((128, 512)) \
        in ((128, 128), (128, 64))
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(state["params"]),
                    jax.tree_util.tree_leaves(ref_state["params"])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_mesh_config_errors_name_the_key():
  cfg = config_lib.base_config()
  for shape, axes, needle in (((3, 4), ("data", "fsdp"), "does not fit the 8 devices"),
                              ((8,), ("model",), "mesh.axes"),
                              ((2, 4), ("data",), "differ in length")):
    cfg.mesh.update(dict(shape=shape, axes=axes))
    with pytest.raises(config_lib.ConfigError, match=needle):
      sharding.mesh_from_config(cfg.mesh)
  cfg.mesh.update(dict(shape=(-1, 2), axes=("data", "fsdp")))
  assert dict(sharding.mesh_from_config(cfg.mesh).shape) == {"data": 4, "fsdp": 2}
  cfg.model.dtype = "float16"
  with pytest.raises(config_lib.ConfigError, match="model.dtype='float16'"):
    get_method(cfg)


def test_accelerator_settings_train_step_is_plain_xla():
  """bf16 + fused attention + fsdp, the CPU wing off (what a GPU/TPU runs): no CPU-only
  machinery in the step (no barrier loop, FFI kernel or wing VJP)."""
  for method_name in ("tscam", "scm", "vitol"):
    cfg = _config(method_name, dtype="bfloat16", fused_attn=True)
    cfg.mesh.update(dict(shape=(2, 4), axes=("data", "fsdp")))
    mesh = sharding.mesh_from_config(cfg.mesh)
    method = get_method(cfg, Runtime())
    tx = optax.adamw(1e-3)
    state = trainer.init_state(method, tx, seed=0)
    step = trainer.jit_train_step(trainer.make_train_step(method, tx, optax.constant_schedule(1e-3)),
                                  mesh, Runtime(), sharding.state_shardings(state, mesh))
    batch = sharding.global_batch(_batch(8), mesh)
    names, bwds = _primitives(jax.make_jaxpr(step)(state, batch).jaxpr)
    assert "while" not in names and "ffi_call" not in names and "custom_call" not in names
    assert not bwds & WING_VJPS
    hlo = step.lower(state, batch).as_text()
    assert "bf16" in hlo and "custom_call_target=\"cpu" not in hlo


def _cli(workdir, data_dir, devices: int, *extra: str):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, "-m", "wsol_jax.train", "--config",
         str(ROOT / "configs/tscam_synthetic.py:smoke"), "--workdir", str(workdir),
         f"--config.data.data_dir={data_dir}", "--config.model.kwargs.embed_dim=128",
         "--config.model.kwargs.num_heads=4", "--config.eval.test_at_end=False", *extra]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_checkpoint_written_on_an_fsdp_mesh_resumes_on_four_replicated_devices(tmp_path):
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  first = _cli(workdir, data_dir, 8, "--config.mesh.shape=(2,4)",
               "--config.mesh.axes=('data','fsdp')", "--config.training.total_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "sharded" in first.stderr and "'fsdp': 4" in first.stderr
  second = _cli(workdir, data_dir, 4, "--config.training.total_steps=6")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed" in second.stderr and "at step 4 of 6" in second.stderr
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in train)
  ran = json.loads((workdir / "config.json").read_text())["runtime"]
  assert ran["device_count"] == 4


def test_every_paper_config_has_a_bf16_variant():
  papers = [p for p in sorted((ROOT / "configs").glob("*.py"))
             if p.stem.rpartition("_")[2] in ("cub", "ilsvrc", "dogs", "voc")]
  assert len(papers) >= 17
  for path in papers:
    cfg = config_lib.load(f"{path}:bf16")
    assert (cfg.model.dtype, cfg.model.param_dtype) == ("bfloat16", "float32"), path.name
    assert config_lib.load(str(path)).model.dtype == "float32"


def test_bfloat16_cnn_step_keeps_batchnorm_statistics_float32():
  cfg = config_lib.load(f"{ROOT / 'configs/rfga_cub.py'}:bf16")
  cfg.model.kwargs = dict(layers=(1, 1, 1, 1), width=8)
  cfg.model.num_classes, cfg.data.image_size = 5, 32
  method = get_method(cfg, Runtime())
  tx = optax.sgd(0.01)
  state = trainer.init_state(method, tx, seed=0)
  state, metrics = jax.jit(trainer.make_train_step(method, tx, optax.constant_schedule(0.01)))(
      state, {k: jnp.asarray(v) for k, v in _batch().items()})
  assert np.isfinite(float(metrics["loss"]))
  floats = {x.dtype for x in jax.tree_util.tree_leaves((state["params"], state["model_state"]))}
  assert floats == {jnp.dtype(jnp.float32)}
