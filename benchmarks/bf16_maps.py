"""bfloat16 against float32 maps of a trained model, on a split: rank agreement and metrics.

    python benchmarks/bf16_maps.py --config configs/agcam_synthetic.py \
        --checkpoint /tmp/wsol-agcam/export [--kinds agcam,gar,rollout,lrp] [--split test]

For each map kind the model runs twice on the same images, with ``model.dtype=float32`` and
``bfloat16`` (float32 parameters; the maps' post-processing is float32 either way): the
per-image Spearman rank correlation of the raw maps (the thresholds MaxBoxAccV2 sweeps only
see the ranking) and the evaluator's MaxBoxAccV2 and classification top-1 under each dtype.
On a CPU bfloat16 runs slowly (emulated); the agreement is what this script is for.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from wsol_jax import checkpoint, config_lib, methods, sharding
from wsol_jax import data as data_lib
from wsol_jax.eval import evaluator as evaluator_lib
from wsol_jax.maps import postprocess
from wsol_jax.runtime import Runtime


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--kinds", default="", help="comma-separated map kinds (default: the method's)")
  parser.add_argument("--split", default="test")
  args, rest = parser.parse_known_args(argv)
  config = config_lib.load(args.config, [r[len("--config."):] for r in rest])
  config.cpu_tuning = "off"
  variables, _, where = checkpoint.load_variables(args.checkpoint)
  built = {d: methods.get_method(_with_dtype(config, d), Runtime()) for d in ("float32", "bfloat16")}
  kinds = [k for k in args.kinds.split(",") if k] or list(built["float32"].map_kinds)
  mesh = sharding.make_mesh()
  batch = int(config.eval.batch_size)
  rows = {}
  for kind in kinds:
    rho = []
    fns = {d: jax.jit(lambda v, x, y, m=m: m.maps(v, x, y, kind=kind)[0]) for d, m in built.items()}
    for host in data_lib.build_eval_iterator(config.data, args.split, batch):
      images = postprocess.normalize_images(jnp.asarray(host["image"]), built["float32"].mean,
                                            built["float32"].std)
      labels = jnp.asarray(host["label"])
      maps = {d: np.asarray(fn(variables, images, labels), np.float32) for d, fn in fns.items()}
      for a, b in zip(maps["bfloat16"].reshape(len(labels), -1),
                      maps["float32"].reshape(len(labels), -1)):
        rho.append(stats.spearmanr(a, b).statistic)
    metrics = {}
    for d, m in built.items():
      cfg = _with_dtype(config, d)
      cfg.eval.map_kind = kind
      metrics[d] = dict(evaluator_lib.for_method(m, cfg, args.split, mesh).run(variables))
    rows[kind] = {"spearman_median": float(np.nanmedian(rho)), "spearman_p5": float(np.nanpercentile(rho, 5)),
                  **{f"maxboxacc_v2_{d}": metrics[d]["maxboxacc_v2"] for d in metrics},
                  **{f"cls_top1_{d}": metrics[d].get("cls_top1") for d in metrics}}
    print(kind, json.dumps(rows[kind]), flush=True)
  print(f"\n{where}, split {args.split}")
  print(f"{'kind':10s} {'rho median':>10s} {'rho p5':>8s} {'V2 fp32':>8s} {'V2 bf16':>8s} {'diff':>6s}")
  for kind, r in rows.items():
    diff = r["maxboxacc_v2_bfloat16"] - r["maxboxacc_v2_float32"]
    print(f"{kind:10s} {r['spearman_median']:10.4f} {r['spearman_p5']:8.4f} "
          f"{r['maxboxacc_v2_float32']:8.2f} {r['maxboxacc_v2_bfloat16']:8.2f} {diff:+6.2f}")
  return rows


def _with_dtype(config, dtype: str):
  cfg = copy.deepcopy(config)
  cfg.model.dtype = dtype
  return cfg


if __name__ == "__main__":
  sys.exit(main() and 0)
