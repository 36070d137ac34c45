"""Cost of SCM's Activation Diffusion Blocks: TS-CAM vs SCM training step (loss + grad).

Times ``jax.jit(jax.value_and_grad(method.loss))`` for TS-CAM and SCM (both ADB
implementations; the stencil's Newton–Schulz steps in the CPU kernel and, for comparison,
on XLA's ops) on the same backbone, plus the ADB stack alone, and prints the
XLA cost-analysis FLOPs of every compiled function::

    python benchmarks/scm_blocks.py --batch 8                      # DeiT-S, 224, 200 classes
    python benchmarks/scm_blocks.py --batch 32 --repeats 3 --json out.json

The CPU wing is set up as the trainer sets it up (``wsol_jax.cpu``, ``--cpu-tuning``; with
the Newton–Schulz kernel the stencil is also timed with the wing's other parts only). Timings interleave the variants (round-robin) and report the median
and the minimum of ``--repeats`` runs after one warm-up call, so load from other processes
affects every variant alike. FLOPs come from XLA's cost analysis of the
lowered (pre-optimisation) HLO of the XLA-op version of each variant (they cannot see inside
the CPU Newton–Schulz kernel); the ADB iterations are unrolled Python loops, so every
iteration is counted (a while-loop body would be counted once).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wsol_jax import config_lib, cpu
from wsol_jax.methods import get_method
from wsol_jax.methods import scm as scm_lib
from wsol_jax.models import scm_adb
from wsol_jax.runtime import Runtime


def make_config(method: str, args: argparse.Namespace, impl: str = "stencil"
                ) -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.method = method
  c.model.update(dict(name=args.model, num_classes=args.num_classes,
                      drop_path_rate=args.drop_path))
  c.data.image_size = args.image_size
  c.scm.update(dict(impl=impl, precision=args.precision))
  return c


def flops(fn: Callable, *args: Any) -> float:
  """FLOPs of ``jax.jit(fn)(*args)``: XLA's cost analysis of the lowered HLO."""
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def prepare(grad_fn: Callable, args: tuple[Any, ...], run: bool, count_fn: Callable,
            options: dict[str, str]) -> tuple[Callable | None, float]:
  """(a compiled zero-argument runner, or None if not ``run``; the FLOPs of ``count_fn``)."""
  runner = None
  if run:
    compiled = jax.jit(grad_fn).lower(*args).compile(compiler_options=options or None)
    runner = lambda: compiled(*args)  # noqa: E731
  return runner, flops(count_fn, *args)


def step_fn(method, batch: dict[str, jax.Array]) -> tuple[Callable, tuple[Any, ...]]:
  """value_and_grad of the method's training loss and its arguments."""
  variables = method.init(jax.random.key(0))
  return (jax.value_and_grad(lambda v, b, r: method.loss(v, b, r)[0]),
          (variables, batch, jax.random.key(1)))


def adbs_fn(cfg: scm_lib.ScmConfig, s: jax.Array, f: jax.Array, steps: Any
            ) -> tuple[Callable, tuple[Any, ...]]:
  """The ADB stack alone: value_and_grad of sum(GAP(S^K)) w.r.t. (S⁰, F⁰, λ, β)."""
  module = scm_adb.ActivationDiffusion(cfg.iterations, cfg.alpha, cfg.lambda_init, cfg.beta_init,
                                       cfg.impl, cfg.precision, steps)
  params = module.init(jax.random.key(0), s[:1], f[:1])

  def loss(s, f, p):
    out, _, _ = module.apply(p, s, f)
    return jnp.sum(jnp.mean(out, axis=(1, 2)))
  return jax.value_and_grad(loss, argnums=(0, 1, 2)), (s, f, params)


def time_round_robin(fns: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
  for fn in fns.values():  # warm-up
    jax.block_until_ready(fn())
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="deit_small_patch16_224")
  parser.add_argument("--num-classes", type=int, default=200)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--drop-path", type=float, default=0.1)
  parser.add_argument("--precision", default="highest", choices=sorted(scm_adb.PRECISIONS))
  parser.add_argument("--no-dense", action="store_true", help="skip the dense (literal) ADB variant")
  parser.add_argument("--cpu-tuning", default="auto", choices=cpu.SETTINGS,
                      help="the CPU wing (as config.cpu_tuning)")
  parser.add_argument("--flops-only", action="store_true", help="count FLOPs, do not time")
  parser.add_argument("--json", default="", help="write the results to this file")
  args = parser.parse_args(argv)
  runtime = cpu.install(argparse.Namespace(cpu_tuning=args.cpu_tuning))  # before JAX starts
  plan = cpu.plan(args.cpu_tuning)
  no_kernel = cpu.runtime(dataclasses.replace(plan, newton_schulz=False))
  steps_impl = runtime.model_impls.get("newton_schulz_steps")

  rng = np.random.default_rng(0)
  b, size = args.batch, args.image_size
  batch = {"image": jnp.asarray(rng.standard_normal((b, size, size, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, args.num_classes, b), jnp.int32)}
  kernel = steps_impl is not None
  # (name, method, impl, runtime); with the CPU kernel also the stencil on XLA's ops.
  variants = [("tscam", "tscam", "stencil", runtime), ("scm_stencil", "scm", "stencil", runtime)]
  if kernel:
    variants.append(("scm_stencil_xla", "scm", "stencil", no_kernel))
  if not args.no_dense:
    variants.append(("scm_dense", "scm", "dense", runtime))

  # The FLOPs are counted with the wing off: cost analysis cannot see inside the FFI kernel.
  fns = {name: (step_fn(get_method(make_config(method, args, impl), rt), batch),
                step_fn(get_method(make_config(method, args, impl), Runtime()), batch)[0])
         for name, method, impl, rt in variants}
  grid = size // 16
  s = jnp.asarray(rng.standard_normal((b, grid, grid, args.num_classes)), jnp.float32)
  f = jnp.asarray(rng.uniform(size=(b, grid * grid)), jnp.float32)
  adb_variants = [("adbs_stencil", "stencil", steps_impl)]
  adb_variants += [("adbs_stencil_xla", "stencil", None)] * kernel
  if not args.no_dense:
    adb_variants.append(("adbs_dense", "dense", None))
  for name, impl, steps_ in adb_variants:
    cfg = scm_lib.ScmConfig(impl=impl, precision=args.precision)
    fns[name] = (adbs_fn(cfg, s, f, steps_), adbs_fn(cfg, s, f, None)[0])
  steps, gflops = {}, {}
  for name, ((grad_fn, fn_args), count_fn) in fns.items():
    steps[name], gflops[name] = prepare(grad_fn, fn_args, not args.flops_only, count_fn,
                                        dict(runtime.compiler_options))

  if args.flops_only:
    times = {name: [float("nan")] for name in steps}
  else:
    times = time_round_robin(steps, args.repeats)
  result = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
            "args": vars(args), "variants": {}}
  base_t = statistics.median(times["tscam"])
  print(f"{jax.default_backend()} {args.model} {size}px batch {b}, {args.num_classes} classes, "
        f"{args.repeats} repeats")
  print(f"{'variant':14s} {'median s':>9s} {'min s':>8s} {'vs tscam':>9s} {'GFLOP/img':>10s}")
  for name, ts in times.items():
    med = statistics.median(ts)
    rel = med / base_t - 1.0 if not name.startswith("adbs") else float("nan")
    result["variants"][name] = {"median_s": med, "min_s": min(ts), "times_s": ts,
                                "gflop_per_image": gflops[name] / 1e9 / b,
                                "rel_to_tscam": rel}
    rel_s = f"{100 * rel:+8.1f}%" if rel == rel else f"{'':9s}"
    print(f"{name:14s} {med:9.3f} {min(ts):8.3f} {rel_s} {gflops[name] / 1e9 / b:10.2f}")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(result, fh, indent=2)
  return result


if __name__ == "__main__":
  main()
