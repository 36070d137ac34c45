"""Optimizers and schedules: the official step rule, timm's decay rule, PyTorch equivalence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from wsol_jax import config_lib, optim
from wsol_jax.methods.base import timm_decay_labels


def _cfg(**kw):
  c = config_lib.base_config()
  for section, values in kw.items():
    c[section].update(values)
  return c


@pytest.mark.parametrize("rule,steps,epochs,expected", [
    ("step", (30,), 60, [30, 60]),          # TS-CAM CUB
    ("step", (10, 12), 20, [10, 12, 20]),   # TS-CAM/SCM ILSVRC
    ("step", (3,), 10, [3, 6, 9]),          # ViTOL ImageNet: ×0.1 every 3 epochs
    ("multistep", (5, 10, 15), 20, [6, 11, 16]),  # MoANA MultiStepLR
])
def test_decay_epochs(rule, steps, epochs, expected):
  assert optim.decay_epochs(rule, steps, epochs) == expected


def test_step_schedule_per_optimizer_step():
  cfg = _cfg(optimizer=dict(lr=5e-4), schedule=dict(name="step", steps=(10, 12), factor=0.1))
  sched = optim.make_schedule(cfg, steps_per_epoch=7, num_epochs=20)
  epoch_lr = [float(sched((e - 1) * 7)) for e in range(1, 21)]
  np.testing.assert_allclose(epoch_lr[:9], 5e-4)
  np.testing.assert_allclose(epoch_lr[9:11], 5e-5, rtol=1e-6)   # epochs 10, 11
  np.testing.assert_allclose(epoch_lr[11:19], 5e-6, rtol=1e-6)  # epochs 12..19
  np.testing.assert_allclose(epoch_lr[19], 5e-7, rtol=1e-6)     # epoch 20
  assert float(sched(9 * 7 - 1)) == pytest.approx(5e-4)  # last step of epoch 9


def test_timm_weight_decay_rule():
  params = {"pos_embed": jnp.zeros((1, 5, 4)), "cls_token": jnp.zeros((1, 1, 4)),
            "blocks_0": {"attn": {"qkv": {"kernel": jnp.zeros((4, 12)), "bias": jnp.zeros(12)}},
                         "norm1": {"scale": jnp.zeros(4)}},
            "head": {"kernel": jnp.zeros((3, 3, 4, 2)), "bias": jnp.zeros(2)},
            "scm": {"adb_0": {"lambda": jnp.zeros(1), "beta": jnp.zeros(1)}}}
  labels = timm_decay_labels(params)
  assert labels["pos_embed"] == labels["cls_token"] == "no_decay"
  assert labels["blocks_0"]["attn"]["qkv"]["kernel"] == labels["head"]["kernel"] == "decay"
  assert labels["blocks_0"]["attn"]["qkv"]["bias"] == labels["blocks_0"]["norm1"]["scale"] == "no_decay"
  assert labels["scm"]["adb_0"]["lambda"] == labels["scm"]["adb_0"]["beta"] == "no_decay"


def _run_both(cfg, torch_opt_fn, steps=5):
  rng = np.random.default_rng(0)
  w0, b0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
  grads = [(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32))
           for _ in range(steps)]
  params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
  sched = optim.make_schedule(cfg, steps_per_epoch=2, num_epochs=3)
  tx = optim.make_optimizer(cfg, sched, timm_decay_labels(params))
  state = tx.init(params)
  tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
  topt = torch_opt_fn(tw, tb)
  tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: float(sched(s)) / float(cfg.optimizer.lr))
  for gw, gb in grads:
    updates, state = tx.update({"w": jnp.asarray(gw), "b": jnp.asarray(gb)}, state, params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
    topt.step()
    tsched.step()
  np.testing.assert_allclose(params["w"], tw.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["b"], tb.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adamw_matches_pytorch_adamw_with_timm_groups():
  cfg = _cfg(optimizer=dict(name="adamw", lr=0.1, weight_decay=0.05),
             schedule=dict(name="step", steps=(2,), factor=0.1))
  _run_both(cfg, lambda w, b: torch.optim.AdamW(
      [{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}],
      lr=0.1, betas=(0.9, 0.999), eps=1e-8))


def test_sgd_nesterov_matches_pytorch_sgd():
  cfg = _cfg(optimizer=dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
             schedule=dict(name="constant"))
  _run_both(cfg, lambda w, b: torch.optim.SGD(
      [{"params": [w], "weight_decay": 1e-4}, {"params": [b], "weight_decay": 0.0}],
      lr=0.05, momentum=0.9, nesterov=True))


def test_lr_multipliers_scale_labelled_groups_and_reject_unknown_labels():
  params = {"w": jnp.ones((2, 2)), "new": jnp.ones((2, 2))}
  labels = {"w": "decay", "new": "new_decay"}
  cfg = _cfg(optimizer=dict(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0,
                            lr_multipliers={"new_decay": 10.0}), schedule=dict(name="constant"))
  tx = optim.make_optimizer(cfg, optim.make_schedule(cfg, 1, 1), labels)
  updates, _ = tx.update({"w": jnp.ones((2, 2)), "new": jnp.ones((2, 2))}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -1.0)
  np.testing.assert_allclose(updates["new"], -10.0)
  cfg.optimizer.lr_multipliers = {"head": 10.0}
  with pytest.raises(ValueError, match="labels no parameter has"):
    optim.make_optimizer(cfg, optim.make_schedule(cfg, 1, 1), labels)
