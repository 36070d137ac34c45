"""Throughput of every map kind vs one plain forward+backward of the same model and batch.

    python benchmarks/maps.py [--model deit_small_patch16_224] [--batch 32] [--repeats 3]
        [--maps-memory-mb 0]

Random-init weights (the cost does not depend on them). Every function is jit-compiled
and warmed up first (compile time excluded); then the timed calls go round-robin over
all functions, ``--repeats`` times, so that load from other processes hits them alike.
The reference is ``jax.grad`` of a cross-entropy loss w.r.t. the parameters (one
training step's forward+backward, no optimizer). Maps use ``targets=None`` (argmax) and
``maps.jitted(..., memory_mb=--maps-memory-mb)`` (0 = automatic; a smaller budget makes
the maps run in chunks: the ``chunks`` column).
Targets: rollout ≈ forward; GAR and AG-CAM ≤ 1.3× forward+backward; LRP ≤ 3×.

Peak host memory: the process's resident high-water mark (Linux ``VmHWM``, which counts
XLA's host buffers and compiled code alike), reset (``/proc/self/clear_refs``) before each
function's second call and read after it: the ``peak GiB`` column is the process's peak
while that function ran, everything else the process holds (its inputs, the other
functions' compiled code and the memory its allocator kept) included.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from wsol_jax.maps.compute import jitted
from wsol_jax.models import create_model


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def build(model_name: str, batch: int, image_size: int, methods: list[str], memory_mb: float = 0
          ) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], int]]]:
  """Name -> zero-argument callable running one jitted batch (already bound to its inputs),
  and name -> a callable giving the number of chunks the maps' memory budget chose."""
  key = jax.random.key(0)
  images = jax.random.normal(key, (batch, image_size, image_size, 3), jnp.float32)
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, 1000)
  model = create_model(model_name, img_size=image_size)
  variables = jax.jit(model.init)(key, images[:1])

  forward = jax.jit(lambda v, x: model.apply(v, x)[0])
  grad = jax.jit(jax.grad(lambda p, x, y: _cross_entropy(model.apply({"params": p}, x)[0], y)))
  fns: dict[str, Callable[[], Any]] = {
      "forward": lambda: forward(variables, images),
      "forward+backward": lambda: grad(variables["params"], images, labels),
  }
  chunks: dict[str, Callable[[], int]] = {}
  for kind in methods:
    if kind in ("tscam", "scm"):
      conv = create_model(model_name, img_size=image_size, head="conv3x3")
      conv_vars = jax.jit(conv.init)(key, images[:1])
      fn = jitted(conv, (kind,), memory_mb=memory_mb)
      fns[kind] = lambda fn=fn, v=conv_vars: fn(v, images)
      chunks[kind] = lambda fn=fn, v=conv_vars: fn.plan(v, images)
    else:
      fn = jitted(model, tuple(kind.split("+")), memory_mb=memory_mb)
      fns[kind] = lambda fn=fn: fn(variables, images)
      chunks[kind] = lambda fn=fn: fn.plan(variables, images)
  return fns, chunks


def _status_kib(field: str) -> int | None:
  """A ``/proc/self/status`` memory field (KiB), None off Linux."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def _reset_peak() -> bool:
  """Resets the process's resident high-water mark (Linux); False where that is impossible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_during(fn: Callable[[], Any]) -> float:
  """Peak resident GiB of the process while ``fn`` ran; the process-lifetime peak
  (``ru_maxrss``) where the high-water mark cannot be reset."""
  reset = _reset_peak()
  jax.block_until_ready(fn())
  peak = _status_kib("VmHWM") if reset else None
  if peak is None:  # ru_maxrss: KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20


def measure(fns: dict[str, Callable[[], Any]], repeats: int
            ) -> tuple[dict[str, list[float]], dict[str, float]]:
  """Seconds per call of every function (compile + one warm-up call excluded), and the peak
  host memory during each one's second call (the first compiles)."""
  memory = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    print(f"  compiled + warmed up {name:<22s} {time.perf_counter() - t0:7.1f} s", flush=True)
    memory[name] = peak_during(fn)
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times, memory


def table(times: dict[str, list[float]], memory: dict[str, float],
          chunks: dict[str, int], batch: int) -> str:
  fwd = statistics.median(times["forward"])
  fwd_bwd = statistics.median(times["forward+backward"])
  lines = [f"{'method':<26s} {'s/batch':>8s} {'min':>8s} {'img/s':>8s} {'/fwd+bwd':>9s} {'/fwd':>7s}"
           f" {'peak GiB':>9s} {'chunks':>6s}"]
  for name, ts in times.items():
    med = statistics.median(ts)
    lines.append(f"{name:<26s} {med:8.3f} {min(ts):8.3f} {batch / med:8.2f} {med / fwd_bwd:9.2f} "
                 f"{med / fwd:7.2f} {memory[name]:9.2f} {chunks.get(name, 1):6d}")
  if "lrp" in times:
    lines.append(f"LRP / forward+backward: {statistics.median(times['lrp']) / fwd_bwd:.2f} "
                 f"(median; min/min {min(times['lrp']) / min(times['forward+backward']):.2f}; "
                 "target <= 3)")
  lines.append(f"process peak resident memory: "
               f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="deit_small_patch16_224")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--methods", nargs="+",
                      default=["rollout", "gar", "agcam", "lrp", "tscam", "gar+rollout+lrp+agcam"],
                      help="map kinds; 'a+b' = one compute() call returning several kinds")
  parser.add_argument("--maps-memory-mb", type=float, default=0.0,
                      help="per-device memory budget of the maps (0 = automatic)")
  args = parser.parse_args()
  methods = list(args.methods)
  try:
    import wsol_jax.maps.lrp  # noqa: F401
  except ModuleNotFoundError:
    methods = [m for m in methods if "lrp" not in m.split("+")]
  print(f"{args.model}, batch {args.batch}, {args.image_size}px, {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)), median of {args.repeats} round-robin repeats", flush=True)
  fns, chunks = build(args.model, args.batch, args.image_size, methods, args.maps_memory_mb)
  times, memory = measure(fns, args.repeats)
  print(table(times, memory, {name: count() for name, count in chunks.items()}, args.batch))


if __name__ == "__main__":
  main()
