"""TS-CAM train step: wsol_jax against the official PyTorch model run eagerly, in one run.

  pip install torch==2.13.0        # CPU wheel; not a dependency of wsol_jax
  python benchmarks/torch_reference.py --steps 6

The PyTorch side is the official TS-CAM training graph written out in plain PyTorch
(vasgaowei/TS-CAM ``deit.py``: timm DeiT blocks that also return their attention
weights, stochastic depth 0–0.1, the 3×3 conv head on the patch tokens, spatial mean,
cross-entropy, AdamW), DeiT-S, 224, batch 32, fp32, as many threads as JAX uses. The
JAX side is ``benchmarks/train_step.py``'s TS-CAM step (the trainer's jitted step). The
two are interleaved round by round (a shared VM drifts by 10–20 % over minutes), and
"JAX / torch" is the ratio of median step times (below 1: wsol_jax is faster).
``--profile`` adds one PyTorch step under ``torch.profiler`` and splits its time into
dense GEMMs (``aten::mm``, ``aten::addmm``), attention's batched GEMMs (``aten::bmm``) and
everything else; eager PyTorch runs op by op, so this split is reliable (XLA:CPU's trace
is not: see ``step_breakdown.py`` for the JAX side).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (sibling benchmark: build(), the matmul rate)

from wsol_jax import cpu  # noqa: E402


def torch_step(batch: int, drop_path_rate: float = 0.1, num_classes: int = 200,
               device: str = "cpu", autocast_dtype=None):
  """A closure running one eager PyTorch TS-CAM (DeiT-S) training step on ``device``
  (``autocast_dtype``, e.g. ``torch.bfloat16``: mixed precision with float32 parameters)."""
  try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
  except ImportError:
    sys.exit("error: this benchmark needs PyTorch: pip install torch==2.13.0")
  torch.set_num_threads(os.cpu_count() or 1)
  dim, heads, depth = 384, 6, 12

  class Attention(nn.Module):
    def __init__(self):
      super().__init__()
      self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
      b, n, c = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
      attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
      return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)), attn

  class Block(nn.Module):
    def __init__(self, drop_path: float):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
      self.attn = Attention()
      self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
      self.drop_path = drop_path

    def _dp(self, x):
      if not self.training or self.drop_path == 0.0:
        return x
      keep = torch.empty((x.shape[0], 1, 1), device=x.device).bernoulli_(1 - self.drop_path)
      return x * keep / (1 - self.drop_path)

    def forward(self, x):
      y, weights = self.attn(self.norm1(x))
      x = x + self._dp(y)
      return x + self._dp(self.fc2(F.gelu(self.fc1(self.norm2(x))))), weights

  class TSCAM(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch_embed = nn.Conv2d(3, dim, 16, 16)
      self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
      self.pos_embed = nn.Parameter(torch.zeros(1, 197, dim))
      rates = torch.linspace(0, drop_path_rate, depth).tolist()
      self.blocks = nn.ModuleList(Block(r) for r in rates)
      self.norm = nn.LayerNorm(dim, eps=1e-6)
      self.head = nn.Conv2d(dim, num_classes, 3, padding=1)

    def forward(self, images):
      x = self.patch_embed(images).flatten(2).transpose(1, 2)
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
      attn_weights = []
      for blk in self.blocks:
        x, weights = blk(x)
        attn_weights.append(weights)
      patches = self.norm(x)[:, 1:]
      side = int(patches.shape[1] ** 0.5)
      patches = patches.reshape(x.shape[0], side, side, dim).permute(0, 3, 1, 2).contiguous()
      return self.head(patches).mean((2, 3))

  torch.manual_seed(0)
  model = TSCAM().train().to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.05)
  images = torch.randn(batch, 3, 224, 224, device=device)
  labels = torch.randint(0, num_classes, (batch,), device=device)
  autocast = (torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype)
              if autocast_dtype is not None else None)

  def step() -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    if autocast is not None:
      with autocast:
        loss = F.cross_entropy(model(images), labels)
    else:
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    if device != "cpu":
      torch.cuda.synchronize()
    return time.perf_counter() - start

  return step


def profile_split(step) -> dict[str, float]:
  """Seconds of one ``torch_step`` step by kind: {'dense GEMM', 'attention bmm', 'other'}."""
  from torch.profiler import ProfilerActivity, profile
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
  split = {"dense GEMM": 0.0, "attention bmm": 0.0, "other": 0.0}
  for event in prof.key_averages():
    kind = ("dense GEMM" if event.key in ("aten::mm", "aten::addmm")
            else "attention bmm" if event.key == "aten::bmm" else "other")
    split[kind] += event.self_cpu_time_total / 1e6
  return split


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed rounds (after 2 warm-ups)")
  parser.add_argument("--profile", action="store_true",
                      help="also split one PyTorch step's time by op kind (torch.profiler)")
  args = parser.parse_args()
  cpu.install(argparse.Namespace(cpu_tuning="auto"))  # before JAX starts, as the trainer does
  run_torch = torch_step(args.batch)
  *jax_step, flops = train_step.build("tscam", args.batch)
  times, rates = train_step.time_round_robin(
      {"torch": run_torch, "jax": train_step.step_runner(*jax_step)}, args.steps)
  burst = max(fastest for fastest, _ in rates)
  print(f"TS-CAM DeiT-S 224, batch {args.batch}, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), {os.cpu_count()} threads; {args.steps} interleaved rounds; fastest 2048^3 "
        f"JAX matmul {burst / 1e9:.1f} GFLOP/s; {flops / 1e9:.1f} GFLOP/step (XLA cost analysis)")
  print(f"{'step':<20}{'best s':>8}{'median s':>10}{'img/s':>7}{'GFLOP/s':>9}{'of matmul':>11}")
  for name, label in (("torch", "PyTorch eager"), ("jax", "wsol_jax (jit)")):
    best, med = min(times[name]), statistics.median(times[name])
    print(f"{label:<20}{best:8.3f}{med:10.3f}{args.batch / med:7.1f}{flops / best / 1e9:9.1f}"
          f"{flops / best / burst:10.1%}")
  print(f"JAX / torch (median step time): "
        f"{statistics.median(times['jax']) / statistics.median(times['torch']):.3f}")
  if args.profile:
    split = profile_split(run_torch)
    print("one profiled PyTorch step: " + ", ".join(
        f"{kind} {sec:.3f} s" for kind, sec in split.items()) + f" (total {sum(split.values()):.3f} s)")


if __name__ == "__main__":
  main()
