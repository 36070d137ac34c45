"""Where the TS-CAM DeiT-S train step spends its time, by ablation, measured in one run.

  python benchmarks/step_breakdown.py --steps 4
  python benchmarks/step_breakdown.py --steps 6 --variants full,no_attention,gemm_only

``jax.profiler`` traces of this step are not usable on XLA:CPU (a traced step took 22 s
for a ~10 s step, with elementwise fusions 10–50× slower than untraced). This script
measures instead: it compiles the benchmark's TS-CAM step (``train_step.build``) several
times, each with one part of the ViT replaced by a no-op while tracing, and times the
compiled steps round-robin with the matmul rate. The drop in step time is that part's
cost in context. The variants:

* ``full``: the step as the trainer runs it (the CPU wing as ``cpu_tuning='auto'`` sets it
  up: on one device the attention core in the FFI kernel ``wsol_jax.cpu.attention``);
* ``xla_attention``: the same step with XLA's attention (the wing without its ``attention``);
* ``no_gelu``, ``no_layernorm``, ``no_droppath``: that op is the identity;
* ``no_attention``: the split into heads and the attention core (q·kᵀ, softmax, ·v)
  are skipped, the attention output is v (the qkv and proj Dense layers stay);
* ``skeleton``: all four of the above (Dense layers, residuals, patch embedding, head,
  loss, AdamW remain);
* ``gemm_only``: not the model, the 144 dense GEMMs of its 12 blocks alone (for every
  Dense: X·W, G·Wᵀ, Xᵀ·G at the step's shapes), jitted per block, back to back.

The ablated steps compute something else, so their numbers only say what a part costs;
they are never a training step to use.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Callable

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (sibling benchmark: patched_step_runner, time_round_robin)

from wsol_jax import cpu  # noqa: E402
from wsol_jax.models import vit  # noqa: E402

DIM, DEPTH, TOKENS = 384, 12, 197  # DeiT-S at 224 px
DENSE_SHAPES = ((DIM, 3 * DIM), (DIM, DIM), (DIM, 4 * DIM), (4 * DIM, DIM))  # qkv, proj, fc1, fc2


class _Identity(nn.Module):
  """Stands in for a LayerNorm."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x


def _attention_value_only(self: vit.Attention, x, *, train, delta, stop_grad_input, cls_row=False,
                          need_scores=False):
  """``vit.Attention.__call__`` without its core: the heads' output is v."""
  del train, delta, stop_grad_input, cls_row, need_scores
  b, n, dim = x.shape
  qkv = vit._dense(3 * dim, "qkv", self.dtype, self.dot_general, use_bias=self.qkv_bias)(x)
  v = qkv.reshape(b, n, 3, dim)[:, :, 2]
  return vit._dense(dim, "proj", self.dtype, self.dot_general)(v), {}


PARTS_OFF = {"xla_attention": ("attention",)}  # variant: wing parts turned off
ABLATIONS = {  # variant: [(object, attribute, replacement)] while the step is traced
    "full": [],
    "xla_attention": [],
    "no_gelu": [(vit, "gelu", lambda x: x)],
    "no_layernorm": [(vit, "_layer_norm", lambda eps, name, dtype: _Identity(name=name))],
    "no_droppath": [(vit.DropPath, "__call__", lambda self, x, train: x)],
    "no_attention": [(vit.Attention, "__call__", _attention_value_only)],
}
ABLATIONS["skeleton"] = [p for name in ("no_gelu", "no_layernorm", "no_droppath", "no_attention")
                         for p in ABLATIONS[name]]


def gemm_only(batch: int) -> tuple[Callable[[], float], float]:
  """(runner, FLOPs) of the blocks' dense GEMMs alone: forward, dX and dW of every Dense."""
  rows = batch * TOKENS
  key = iter(jax.random.split(jax.random.key(0), 16))
  acts = {d: jax.random.normal(next(key), (rows, d)) for d in (DIM, 3 * DIM, 4 * DIM)}
  weights = [jax.random.normal(next(key), shape) * 0.02 for shape in DENSE_SHAPES]

  @jax.jit
  def block(acts, weights):
    out = []
    for (d_in, d_out), w in zip(DENSE_SHAPES, weights):
      x, g = acts[d_in], acts[d_out]
      out += [x @ w, g @ w.T, x.T @ g]
    return out

  jax.block_until_ready(block(acts, weights))

  def run() -> float:
    start = time.perf_counter()
    for _ in range(DEPTH):
      out = block(acts, weights)
    jax.block_until_ready(out)
    return time.perf_counter() - start

  return run, DEPTH * sum(3 * 2 * rows * d_in * d_out for d_in, d_out in DENSE_SHAPES)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=4, help="timed rounds (after 2 warm-ups)")
  parser.add_argument("--variants", default=",".join([*ABLATIONS, "gemm_only"]))
  args = parser.parse_args()
  variants = args.variants.split(",")
  unknown = sorted(set(variants) - {*ABLATIONS, "gemm_only"})
  if unknown:
    parser.error(f"unknown variants {unknown}; valid: {[*ABLATIONS, 'gemm_only']}")
  cpu.install(argparse.Namespace(cpu_tuning="auto"))  # before JAX starts, as the trainer does
  plan = cpu.plan("auto")

  def runtime(v):
    return cpu.runtime(dataclasses.replace(plan, **{p: False for p in PARTS_OFF.get(v, ())}))
  built = {v: gemm_only(args.batch) if v == "gemm_only"
           else train_step.patched_step_runner("tscam", args.batch, ABLATIONS[v], runtime(v))
           for v in variants}
  times, rates = train_step.time_round_robin({v: run for v, (run, _) in built.items()}, args.steps)
  burst = max(fastest for fastest, _ in rates)
  ref = statistics.median(times["full"]) if "full" in times else None
  print(f"TS-CAM DeiT-S 224, batch {args.batch}; {args.steps} interleaved rounds; fastest 2048^3 "
        f"matmul {burst / 1e9:.1f} GFLOP/s. 'full - this': median step time of full minus this "
        f"variant's (what the removed part costs).")
  print(f"{'variant':<14}{'GFLOP':>8}{'best s':>9}{'median s':>10}{'GFLOP/s':>9}{'full - this':>13}")
  for v in variants:
    best, med = min(times[v]), statistics.median(times[v])
    saved = f"{ref - med:+.3f}" if ref is not None else "-"
    print(f"{v:<14}{built[v][1] / 1e9:8.1f}{best:9.3f}{med:10.3f}{built[v][1] / best / 1e9:9.1f}"
          f"{saved:>13}")


if __name__ == "__main__":
  main()
