"""One command on a GPU/TPU machine: is wsol_jax correct and fast here?

    python benchmarks/accelerator_check.py                 # sized for < 8 minutes on one GPU
    python benchmarks/accelerator_check.py --skip-tests --out check.json
    python benchmarks/accelerator_check.py --smoke         # tiny sizes: checks the script itself

Offline (nothing is downloaded). It prints the backend, devices and versions, then:

1. **tests on the device** (a pytest subprocess on this backend, matmuls at
   ``precision=HIGHEST``, see tests/conftest.py): golden parity of the models and maps with
   the official code (needs ../shared/golden/v1 or ``WSOL_GOLDEN_DIR``; else they skip),
   fused = explicit attention, bfloat16 vs float32 agreement;
2. **train steps**: TS-CAM and SCM, DeiT-S and DeiT-B, 224 px, batch 128, float32 and
   bfloat16 (fused attention; the trainer's jitted step: forward, backward, AdamW):
   img/s, TFLOP/s from XLA's cost analysis, and the fraction of the device's peak
   (``PEAK_TFLOPS``; float32 against the TF32 peak on GPUs, which XLA's default precision
   uses);
3. **maps** at batch 64 (DeiT-S): GAR, AG-CAM, LRP, in img/s and as a multiple of one
   forward+backward;
4. **the evaluator** (data pipeline → TS-CAM maps on the device → MaxBoxAccV2 and the other
   accumulators on the host) on a generated synthetic test split, img/s;
5. where PyTorch sees the same accelerator: the official TS-CAM DeiT-S step
   (``benchmarks/torch_reference.py``'s model) beside ours, same batch and dtype (autocast).

It writes one JSON (``--out``) and prints one table. Without flax/optax/orbax/grain/tfds on
the machine, bring them as wheels: benchmarks/README.md, "Accelerator check".
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

REQUIRED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "ml-collections", "etils", "numpy", "scipy", "opencv-python-headless", "pillow")
# Dense peak TFLOP/s per device (bfloat16, float32 as XLA's default precision runs it: TF32 on
# NVIDIA Ampere+, bfloat16 passes on TPUs), by a substring of ``device_kind``; first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.0, "float32": 494.0}),
    ("H200", {"bfloat16": 989.0, "float32": 494.0}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v6", {"bfloat16": 918.0, "float32": 918.0}),
)
TEST_FILES = ("tests/test_golden_fixture.py", "tests/test_models_vit.py", "tests/test_models_resnet.py",
              "tests/test_maps_rollout.py", "tests/test_maps_agcam.py", "tests/test_maps_lrp.py",
              "tests/test_maps_semantic.py", "tests/test_maps_cam.py", "tests/test_scm.py",
              "tests/test_padl.py", "tests/test_rfga.py", "tests/test_accelerator_path.py")
TEST_SELECTION = "not fsdp and not eight and not checkpoint_written and not slow"


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in REQUIRED + ("torch",):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "missing"
  return out


def peak(device_kind: str, dtype: str) -> float | None:
  return next((p[dtype] for key, p in PEAK_TFLOPS if key in device_kind), None)


def run_tests(backend: str, timeout: int) -> dict[str, Any]:
  """The accelerator-relevant tests in a pytest subprocess on ``backend``."""
  env = dict(os.environ, JAX_PLATFORMS=backend)
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", TEST_SELECTION,
         *[f for f in TEST_FILES if (ROOT / f).exists()]]
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"status": f"timed out after {timeout} s"}
  tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
  failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
  return {"status": "passed" if proc.returncode == 0 else f"rc {proc.returncode}",
          "summary": tail, "failed": failed[:20], "seconds": round(time.perf_counter() - start, 1)}


def _config(method: str, model: str, dtype: str, batch: int, size: int):
  from wsol_jax import config_lib
  cfg = config_lib.base_config()
  cfg.method = method
  cfg.model.update(dict(name=model, num_classes=200, dtype=dtype, fused_attn=True))
  cfg.data.image_size = size
  cfg.training.batch_size = batch
  cfg.cpu_tuning = "off"
  return cfg


def _flops(stage) -> float:
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _time(fn: Callable[[], Any], repeats: int) -> float:
  """Median seconds of ``fn`` (its result blocked on) after one warm-up call."""
  import jax
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def train_step_row(method: str, model: str, dtype: str, batch: int, size: int, steps: int
                   ) -> dict[str, Any]:
  import jax
  import numpy as np

  from wsol_jax import methods, optim, sharding, trainer
  from wsol_jax.runtime import Runtime
  cfg = _config(method, model, dtype, batch, size)
  m = methods.get_method(cfg, Runtime())
  sched = optim.make_schedule(cfg, steps_per_epoch=100, num_epochs=1)
  params = jax.eval_shape(lambda: m.init_fresh(jax.random.key(0)))["params"]
  tx = optim.make_optimizer(cfg, sched, m.param_labels(params))
  mesh = sharding.make_mesh()
  abstract = jax.eval_shape(lambda: trainer.init_state(m, tx, 0))
  shardings = sharding.state_shardings(abstract, mesh)
  state = jax.jit(lambda: trainer.init_state(m, tx, 0), out_shardings=shardings)()
  step = trainer.jit_train_step(trainer.make_train_step(m, tx, sched), mesh, Runtime(), shardings)
  rng = np.random.default_rng(0)
  data = sharding.global_batch({"image": rng.integers(0, 256, (batch, size, size, 3), np.uint8),
                                "label": rng.integers(0, 200, (batch,), np.int32)}, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled) * mesh.devices.size
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], data)
    return metrics["loss"]
  seconds = _time(run, steps)
  return {"what": f"train {method}", "model": model, "dtype": dtype, "batch": batch,
          "seconds": seconds, "img_s": batch / seconds, "tflops": flops / seconds / 1e12,
          "compile_s": compile_s}


def maps_rows(model_name: str, batch: int, size: int, dtype: str, repeats: int
              ) -> list[dict[str, Any]]:
  import jax
  import jax.numpy as jnp

  from wsol_jax.maps.compute import jitted
  from wsol_jax.models import create_model
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, 1000)
  model = create_model(model_name, img_size=size, dtype=jnp.dtype(dtype))
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])

  def xent(p):
    logp = jax.nn.log_softmax(model.apply({"params": p}, images)[0])
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
  grad = jax.jit(jax.grad(xent))
  reference = _time(lambda: grad(variables["params"]), repeats)
  rows = [{"what": "forward+backward", "model": model_name, "dtype": dtype, "batch": batch,
           "seconds": reference, "img_s": batch / reference, "x_fwd_bwd": 1.0}]
  for kind in ("gar", "agcam", "lrp"):
    fn = jitted(model, (kind,))
    seconds = _time(lambda fn=fn: fn(variables, images), repeats)
    rows.append({"what": f"maps {kind}", "model": model_name, "dtype": dtype, "batch": batch,
                 "seconds": seconds, "img_s": batch / seconds, "x_fwd_bwd": seconds / reference})
  return rows


def evaluator_row(model_name: str, size: int, batch: int, num_images: int, dtype: str
                  ) -> dict[str, Any]:
  """The TS-CAM evaluator on a synthetic test split generated into a temporary directory."""
  import jax

  from wsol_jax import config_lib, methods, sharding
  from wsol_jax.eval import evaluator as evaluator_lib
  from wsol_jax.runtime import Runtime
  cfg = config_lib.base_config()
  config_lib.set_synthetic_data(cfg, image_size=size)
  cfg.method = "tscam"
  cfg.model.update(dict(name=model_name, dtype=dtype, fused_attn=True))
  cfg.data.synthetic.update(dict(num_train=batch, num_val=batch, num_test=num_images))
  cfg.eval.batch_size = batch
  with tempfile.TemporaryDirectory() as data_dir:
    cfg.data.data_dir = data_dir
    method = methods.get_method(cfg, Runtime())
    variables = method.init_fresh(jax.random.key(0))
    t0 = time.perf_counter()
    ev = evaluator_lib.for_method(method, cfg, "test", sharding.make_mesh())
    prepare = time.perf_counter() - t0
    ev.run(variables)  # compiles
    t0 = time.perf_counter()
    metrics = dict(ev.run(variables))
    seconds = time.perf_counter() - t0
  return {"what": "evaluator tscam", "model": model_name, "dtype": dtype, "batch": batch,
          "images": num_images, "seconds": seconds, "img_s": num_images / seconds,
          "dataset_s": prepare, "maxboxacc_v2": metrics.get("maxboxacc_v2")}


def torch_row(batch: int, dtype: str, steps: int) -> dict[str, Any] | None:
  try:
    import torch
  except ImportError:
    return None
  if not torch.cuda.is_available():
    return None
  import torch_reference
  step = torch_reference.torch_step(batch, device="cuda",
                                    autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None)
  step()
  seconds = statistics.median(step() for _ in range(steps))
  return {"what": "train tscam (PyTorch, official model)", "model": "deit_small_patch16_224",
          "dtype": dtype, "batch": batch, "seconds": seconds, "img_s": batch / seconds,
          "torch": torch.__version__, "device": torch.cuda.get_device_name()}


def table(rows: list[dict[str, Any]], device_kind: str) -> str:
  head = (f"{'what':40s} {'model':24s} {'dtype':9s} {'batch':>5s} {'s/call':>8s} {'img/s':>8s} "
          f"{'TFLOP/s':>8s} {'of peak':>7s} {'x f+b':>6s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    tflops, ratio = r.get("tflops"), r.get("x_fwd_bwd")
    p = peak(device_kind, r["dtype"]) if tflops else None
    cells = ("" if tflops is None else f"{tflops:.1f}", "" if p is None else f"{tflops / p:.1%}",
             "" if ratio is None else f"{ratio:.2f}")
    lines.append(f"{r['what'][:40]:40s} {r['model'][:24]:24s} {r['dtype']:9s} {r['batch']:5d} "
                 f"{r['seconds']:8.4f} {r['img_s']:8.1f} {cells[0]:>8s} {cells[1]:>7s} "
                 f"{cells[2]:>6s}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="accelerator_check.json")
  parser.add_argument("--batch", type=int, default=128, help="train-step batch")
  parser.add_argument("--maps-batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10, help="timed calls per row")
  parser.add_argument("--skip-tests", action="store_true")
  parser.add_argument("--tests-timeout", type=int, default=240)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny batches and one model (checks the script, e.g. on a CPU)")
  args = parser.parse_args(argv)
  missing = [n for n, v in versions().items() if v == "missing" and n != "torch"]
  if missing:
    sys.exit(f"error: missing packages {missing}; on an offline machine install them from "
             "wheels (benchmarks/README.md, 'Accelerator check')")
  import jax
  device = jax.devices()[0]
  info = {"date": time.strftime("%Y-%m-%d"), "backend": jax.default_backend(),
          "device_kind": device.device_kind, "device_count": jax.device_count(),
          "process_count": jax.process_count(), "versions": versions(),
          "host": platform.node(), "smoke": args.smoke}
  print(json.dumps(info, indent=1), flush=True)
  report: dict[str, Any] = {"info": info}
  if not args.skip_tests:
    report["tests"] = run_tests(info["backend"], args.tests_timeout)
    print("tests:", json.dumps(report["tests"], indent=1), flush=True)

  if args.smoke:
    models, size, batch, maps_batch, steps, eval_images = (["deit_tiny_patch16_224"], 64, 4, 2,
                                                           2, 8)
  else:
    models, size, batch, maps_batch, steps, eval_images = (
        ["deit_small_patch16_224", "deit_base_patch16_224"], 224, args.batch, args.maps_batch,
        args.steps, 1024)
  rows: list[dict[str, Any]] = []

  def add(fn: Callable[[], Any]) -> None:
    try:
      out = fn()
    except Exception as e:  # one failing row must not hide the others
      print(f"  failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
      report.setdefault("errors", []).append(f"{type(e).__name__}: {e}"[:2000])
      return
    for r in out if isinstance(out, list) else ([out] if out else []):
      rows.append(r)
      print("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                               for k, v in r.items()}), flush=True)

  for dtype in ("float32", "bfloat16"):
    for model in models:
      for method in ("tscam", "scm"):
        add(lambda: train_step_row(method, model, dtype, batch, size, steps))
    add(lambda: torch_row(batch, dtype, steps))
    add(lambda: maps_rows(models[0], maps_batch, size, dtype, max(steps // 2, 2)))
    add(lambda: evaluator_row(models[0], size, maps_batch, eval_images, dtype))
  report["rows"] = rows
  text = table(rows, info["device_kind"])
  report["table"] = text
  print("\n" + text)
  pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
  print(f"\nwrote {args.out}")
  return report


if __name__ == "__main__":
  main()
