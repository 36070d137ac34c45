"""Training-step throughput against this machine's fp32 matmul rate, measured in one run.

  python benchmarks/train_step.py                      # TS-CAM and SCM, DeiT-S, 224, batch 32
  python benchmarks/train_step.py --methods tscam,scm,vitol,rfga --steps 8

For each method: images/s of the full jitted train step (forward, backward, optimizer
update), the step's FLOPs from XLA's cost analysis, the achieved FLOP/s and its fraction
of the fp32 matmul rate measured here (a large square matmul), and each method's step
time relative to TS-CAM's.

Host malloc is configured as ``python -m wsol_jax.train`` configures it
(``wsol_jax.host_memory``: freed memory stays in the process, so XLA:CPU's per-step
buffers are not page-faulted again every step); ``--malloc default`` measures without.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax import config_lib, host_memory, methods, optim, sharding
from wsol_jax import trainer

SETUPS = {
    # method: (model, image size, extra config)
    "tscam": ("deit_small_patch16_224", 224, {}),
    "scm": ("deit_small_patch16_224", 224, {}),
    "vitol": ("deit_small_patch16_224", 224, {}),
    # RFGA paper recipe: ResNet-50 (output stride 8: 56×56 maps) + module + 1×1 head, SGD.
    "rfga": ("resnet50", 448, {"optimizer.name": "sgd"}),
}


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
  """Best-of-``repeats`` fp32 FLOP/s of an n×n @ n×n matmul."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def build(method_name: str, batch: int):
  model_name, size, extra = SETUPS[method_name]
  cfg = config_lib.base_config()
  cfg.method = method_name
  cfg.model.name = model_name
  cfg.model.num_classes = 200
  cfg.data.image_size = size
  cfg.training.batch_size = batch
  for key, value in extra.items():
    config_lib.apply_overrides(cfg, [f"{key}={value}"])
  method = methods.get_method(cfg)
  sched = optim.make_schedule(cfg, steps_per_epoch=100, num_epochs=1)
  params = jax.eval_shape(lambda: method.init_fresh(jax.random.key(0)))["params"]
  tx = optim.make_optimizer(cfg, sched, method.param_labels(params))
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  state = jax.jit(lambda: trainer.init_state(method, tx, 0), out_shardings=rep)()
  step = jax.jit(trainer.make_train_step(method, tx, sched), donate_argnums=(0,),
                 in_shardings=(rep, sharding.batch_sharding(mesh)), out_shardings=(rep, rep))
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
              "label": rng.integers(0, 200, (batch,), dtype=np.int32)}
  batch_dev = sharding.global_batch(batch_np, mesh)
  compiled = step.lower(state, batch_dev).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's cost analysis counts one device's share of the batch-sharded step.
  return step, state, batch_dev, float(cost["flops"]) * mesh.devices.size


def time_steps(step, state, batch, steps: int) -> float:
  for _ in range(2):  # warm-up: compiled already; the first runs allocate
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  best = float("inf")
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    best = min(best, time.perf_counter() - t)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--methods", default="tscam,scm")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                      help="keep: host_memory.keep_freed_host_memory() as the trainer does")
  args = parser.parse_args()
  kept = args.malloc == "keep" and host_memory.keep_freed_host_memory()  # before JAX starts
  rate = matmul_rate()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; fp32 matmul rate "
        f"{rate / 1e9:.1f} GFLOP/s (2048^3, best of 10); host malloc "
        f"{'keeps freed memory' if kept else 'default'}")
  rows = []
  for name in args.methods.split(","):
    step, state, batch, flops = build(name, args.batch)
    dt = time_steps(step, state, batch, args.steps)
    rows.append((name, SETUPS[name][0], SETUPS[name][1], dt, flops))
    del step, state, batch
  base = {r[0]: r[3] for r in rows}.get("tscam")
  print(f"{'method':<8}{'model':<24}{'size':>5}{'step s':>9}{'img/s':>8}{'GFLOP/step':>12}"
        f"{'GFLOP/s':>9}{'of matmul':>11}{'vs TS-CAM':>11}")
  for name, model, size, dt, flops in rows:
    ratio = f"{dt / base:.3f}" if base else "-"
    print(f"{name:<8}{model:<24}{size:>5}{dt:>9.3f}{args.batch / dt:>8.1f}{flops / 1e9:>12.1f}"
          f"{flops / dt / 1e9:>9.1f}{flops / dt / rate:>10.1%}{ratio:>11}")


if __name__ == "__main__":
  main()
