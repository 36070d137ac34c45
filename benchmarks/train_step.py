"""Training-step throughput against this machine's fp32 matmul rate, measured in one run.

  python benchmarks/train_step.py                      # TS-CAM and SCM, DeiT-S, 224, batch 32
  python benchmarks/train_step.py --methods tscam,scm,vitol,sat,rfga --steps 8
  python benchmarks/train_step.py --parts-off attention   # the wing without one part

For each method: images/s of the full jitted train step (forward, backward, optimizer
update), the step's FLOPs from XLA's cost analysis, the achieved FLOP/s and its fraction
of the fp32 matmul rate measured here, and each method's median step time relative to
TS-CAM's. The matmul rate is given twice: the fastest single 2048³ matmul (a burst of
~0.1 s; the headline "of matmul") and the sustained rate of ``MATMUL_RUNS`` back to
back (on this 2-core VM 20–30 % lower, and closer to what a ~10 s step can get). The
methods' steps and the matmul measurement are interleaved round by round: on a shared
VM the speed drifts by 10–20 % over minutes, and two separately timed runs would
inherit that drift.

Each method's step runs as the trainer runs it, with the CPU wing (``wsol_jax.cpu``) as
``--cpu-tuning`` (default ``auto``, the trainer's default) sets it up — on one CPU device the
attention and SCM's Newton–Schulz steps in FFI kernels, the xᵀ·g matmul VJP, the gradient
barrier, the dot-thunk option and the host malloc setting — and, in the same rounds, with
the wing off (plain XLA, what a GPU/TPU runs; the malloc setting is process-wide, so it
applies to both). ``on/off`` is the ratio of the median step times. ``--parts-off`` turns
single parts of the wing off (e.g. ``attention,dots``). XLA's cost analysis cannot see
inside FFI calls, so the FLOPs are always those of the wing-off step (the same arithmetic).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax import config_lib, cpu, methods, optim, sharding
from wsol_jax import trainer
from wsol_jax.runtime import Runtime

SETUPS = {
    # method: (model, image size, extra config)
    "tscam": ("deit_small_patch16_224", 224, {}),
    "scm": ("deit_small_patch16_224", 224, {}),
    "vitol": ("deit_small_patch16_224", 224, {}),
    "sat": ("deit_small_patch16_224", 224, {}),
    # RFGA paper recipe: ResNet-50 (output stride 8: 56×56 maps) + module + 1×1 head, SGD.
    "rfga": ("resnet50", 448, {"optimizer.name": "sgd"}),
}
MATMUL_RUNS = 8  # back-to-back 2048³ matmuls per round


def matmul_rates(n: int = 2048, repeats: int = MATMUL_RUNS) -> tuple[float, float]:
  """fp32 FLOP/s of an n×n @ n×n matmul run ``repeats`` times back to back: (the fastest
  single run, the throughput of all of them together)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best, start = float("inf"), time.perf_counter()
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best, repeats * 2 * n ** 3 / (time.perf_counter() - start)


def _jitted_step(method_name: str, batch: int, runtime: Runtime):
  """(jitted train step, its mesh, a function making its initial state)."""
  model_name, size, extra = SETUPS[method_name]
  cfg = config_lib.base_config()
  cfg.method = method_name
  cfg.model.name = model_name
  cfg.model.num_classes = 200
  cfg.data.image_size = size
  cfg.training.batch_size = batch
  for key, value in extra.items():
    config_lib.apply_overrides(cfg, [f"{key}={value}"])
  method = methods.get_method(cfg, runtime)
  sched = optim.make_schedule(cfg, steps_per_epoch=100, num_epochs=1)
  params = jax.eval_shape(lambda: method.init_fresh(jax.random.key(0)))["params"]
  tx = optim.make_optimizer(cfg, sched, method.param_labels(params))
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  step = trainer.jit_train_step(trainer.make_train_step(method, tx, sched), mesh, runtime)
  return step, mesh, jax.jit(lambda: trainer.init_state(method, tx, 0), out_shardings=rep)


def build(method_name: str, batch: int, runtime: Runtime | None = None):
  """(compiled step, state, batch, FLOPs per step) of ``method_name`` on a random batch
  (``runtime``: default the wing as the trainer's default config sets it up)."""
  if runtime is None:
    runtime = cpu.runtime(cpu.plan(config_lib.base_config().cpu_tuning))
  step, mesh, init_state = _jitted_step(method_name, batch, runtime)
  state = init_state()
  size = SETUPS[method_name][1]
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
              "label": rng.integers(0, 200, (batch,), dtype=np.int32)}
  batch_dev = sharding.global_batch(batch_np, mesh)
  compiled = step.lower(state, batch_dev).compile()
  if runtime.model_impls:
    # XLA cannot count inside the CPU kernels (FFI calls): count the same step with the
    # wing off (its lowered HLO, same state and batch; within 0.1 % of a compiled count).
    flops = _flops(_jitted_step(method_name, batch, Runtime())[0].lower(state, batch_dev))
  else:
    flops = _flops(compiled)
  # XLA's cost analysis counts one device's share of the batch-sharded step.
  return compiled, state, batch_dev, flops * mesh.devices.size


def _flops(stage) -> float:
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


@contextlib.contextmanager
def patched(replacements: Sequence[tuple[Any, str, Any]]):
  """Sets ``setattr(obj, attr, value)`` for each replacement, restoring them on exit."""
  saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in replacements]
  for obj, attr, value in replacements:
    setattr(obj, attr, value)
  try:
    yield
  finally:
    for obj, attr, value in saved:
      setattr(obj, attr, value)


def patched_step_runner(method_name: str, batch: int,
                        replacements: Sequence[tuple[Any, str, Any]],
                        runtime: Runtime | None = None) -> tuple[Callable[[], float], float]:
  """(one-step runner, FLOPs) of ``build(method_name, batch, runtime)`` traced and compiled
  with ``replacements`` in place (e.g. a model function swapped for an experiment); the
  runner calls that compiled executable, so it keeps them after they are restored."""
  with patched(replacements):
    compiled, state, batch_dev, flops = build(method_name, batch, runtime)
  return step_runner(compiled, state, batch_dev), flops


def step_runner(step, state, batch) -> Callable[[], float]:
  """A closure running one ``step`` (jitted or compiled; carrying its state) and returning
  its seconds."""

  def run() -> float:
    nonlocal state
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t

  return run


def time_round_robin(runners: dict[str, Callable[[], float]], rounds: int, warmup: int = 2
                     ) -> tuple[dict[str, list[float]], list[tuple[float, float]]]:
  """Seconds of every ``{name: run}`` (one step per call, e.g. ``step_runner``) and matmul
  rates, interleaved.

  Every round measures the matmul rates and then one step of each, so slow and fast
  periods of a shared machine affect all of them alike.
  """
  for _ in range(warmup):  # compiled already; the first runs allocate
    for run in runners.values():
      run()
  times = {name: [] for name in runners}
  rates = []
  for _ in range(rounds):
    rates.append(matmul_rates())
    for name, run in runners.items():
      times[name].append(run())
  return times, rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--methods", default="tscam,scm")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed rounds (after 2 warm-ups)")
  parser.add_argument("--cpu-tuning", choices=cpu.SETTINGS, default="auto",
                      help="the wing of the main rows (as config.cpu_tuning)")
  parser.add_argument("--parts-off", default="",
                      help="comma-separated wing parts to turn off (fields of wsol_jax.cpu.Plan)")
  parser.add_argument("--no-wing-off-rows", dest="off_rows", action="store_false",
                      help="do not time the wing-off steps beside the main rows")
  args = parser.parse_args()
  runtime = cpu.install(argparse.Namespace(cpu_tuning=args.cpu_tuning))  # before JAX starts
  parts_off = [p for p in args.parts_off.split(",") if p]
  if parts_off:
    plan = cpu.plan(args.cpu_tuning)
    runtime = cpu.runtime(dataclasses.replace(plan, **{p: False for p in parts_off}))
  names = args.methods.split(",")
  built = {name: build(name, args.batch, runtime) for name in names}
  runners = {n: step_runner(*b[:3]) for n, b in built.items()}
  if args.off_rows:
    for name in names:
      compiled, state, batch_dev, flops = build(name, args.batch, Runtime())
      built[f"{name}/off"] = (compiled, state, batch_dev, flops)
      runners[f"{name}/off"] = step_runner(compiled, state, batch_dev)
  times, rates = time_round_robin(runners, args.steps)
  burst = max(r[0] for r in rates)
  sustained = statistics.median(r[1] for r in rates)
  ran = runtime.describe()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; main rows: "
        + ", ".join(f"{k}={v}" for k, v in ran.items() if k not in ("backend", "device_count"))
        + ("; '/off' rows: the wing off (plain XLA; host malloc is process-wide, as above)"
           if args.off_rows else "") + "\n"
        f"fp32 matmul rate (2048^3): {burst / 1e9:.1f} GFLOP/s fastest single run of "
        f"{MATMUL_RUNS * args.steps}; {sustained / 1e9:.1f} GFLOP/s sustained (median over "
        f"rounds of {MATMUL_RUNS} back-to-back runs)")
  print(f"{args.steps} rounds, each: {MATMUL_RUNS} matmuls, then one step of every method. "
        f"best/median: step time; of matmul: best step vs the fastest matmul, and the median "
        f"over rounds of each round's step vs that round's sustained rate; vs TS-CAM: ratio of "
        f"median step times (same wing); on/off: median step with the wing / without")
  print(f"{'method':<12}{'model':<24}{'size':>5}{'best s':>8}{'median s':>9}{'img/s':>7}"
        f"{'GFLOP/step':>11}{'GFLOP/s':>9}{'of matmul':>10}{'(sust.)':>9}{'vs TS-CAM':>10}"
        f"{'on/off':>8}")
  for name in times:
    base_name, _, off = name.partition("/")
    ts, flops = times[name], built[name][3]
    best, med = min(ts), statistics.median(ts)
    paired = statistics.median(flops / t / r[1] for t, r in zip(ts, rates))
    ref = "tscam/off" if off else "tscam"
    ratio = f"{med / statistics.median(times[ref]):.3f}" if ref in times else "-"
    on_off = (f"{med / statistics.median(times[name + '/off']):.3f}"
              if name + "/off" in times else "")
    print(f"{name:<12}{SETUPS[base_name][0]:<24}{SETUPS[base_name][1]:>5}{best:>8.3f}{med:>9.3f}"
          f"{args.batch / best:>7.1f}{flops / 1e9:>11.1f}{flops / best / 1e9:>9.1f}"
          f"{flops / best / burst:>10.1%}{paired:>9.1%}{ratio:>10}{on_off:>8}")


if __name__ == "__main__":
  main()
