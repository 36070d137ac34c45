"""Evaluate a model on a split: ``python -m wsol_jax.evaluate --config CONFIG --checkpoint DIR``.

  python -m wsol_jax.evaluate --config configs/scm_cub.py --checkpoint runs/scm_cub [--split test]
      [--workdir DIR] [--config.eval.map_kind=rollout ...]

DIR (a path or a ``gs://`` URL, as ``--workdir``) is a trainer workdir (its ``export/`` or latest checkpoint), a trainer export, or a
model directory written by ``weights_convert`` (e.g. a released SCM checkpoint imported
with ``--method scm``). Runs the method's maps and every metric over the split with a
progress bar, prints a summary next to the center-Gaussian baseline, and writes
``results.json`` and best/worst overlay PNGs to ``--workdir`` (default DIR/eval_<split>).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from wsol_jax import config_lib


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m wsol_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/<method>_<dataset>.py[:arg]")
  parser.add_argument("--checkpoint", required=True, help="workdir, export or model directory")
  parser.add_argument("--split", default="test", help="split to evaluate (test, val, train[:10%%], ...)")
  parser.add_argument("--workdir", help="where results.json and overlays go")
  args, rest = parser.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments {bad}")
  try:
    config = config_lib.load(args.config, [r[len("--config."):] for r in rest])
    checkpoint_dir = config_lib.dir_path(args.checkpoint, "--checkpoint")
    workdir = (config_lib.dir_path(args.workdir, "--workdir") if args.workdir
               else checkpoint_dir / f"eval_{args.split}")
    from wsol_jax import cpu
    runtime = cpu.install(config)  # before anything starts JAX's backend
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  import jax

  from wsol_jax import checkpoint, methods, reporting, sharding
  from wsol_jax.models import pretrained
  from wsol_jax.runtime import enable_compilation_cache
  enable_compilation_cache(str(config.compilation_cache_dir))
  from wsol_jax.eval import evaluator as evaluator_lib
  from wsol_jax import data as data_lib
  reporting.setup_logging()
  try:
    config, derived = data_lib.resolve_config(config)  # "0 = from the data" keys
    for line in derived:
      print(line, file=sys.stderr, flush=True)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (data_lib.MetadataError, data_lib.MetadataNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    variables, meta, where = checkpoint.load_variables(checkpoint_dir)
    method = methods.get_method(config, runtime)
    if meta is not None and meta.get("method") not in (None, config.method):
      raise ValueError(f"{where} holds a {meta['method']!r} model but the config is for "
                       f"{config.method!r}")
    pretrained.check_fit(variables, jax.eval_shape(lambda: method.init_fresh(jax.random.key(0))))
    print(method.runtime.summary(), file=sys.stderr, flush=True)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.mesh_from_config(config.mesh)
  variables = jax.device_put(variables, sharding.state_shardings(variables, mesh))
  ev = evaluator_lib.for_method(method, config, args.split, mesh, protocols=True, progress=True)
  report = ev.evaluate(variables)
  results = report.metrics
  baseline = dict(ev.run_baseline())
  overlays = ev.write_overlays(variables, report.per_image, workdir / "overlays",
                               int(config.eval.num_overlays))
  reporting.print_summary(config, results, baseline, split=args.split)
  checkpoint.write_json(workdir / "results.json", {
      "checkpoint": where, "split": args.split, "config": config.to_dict(),
      "runtime": method.runtime.describe(),
      "metrics": results, "center_gaussian": baseline,
      "overlays": [str(p) for p in overlays]})
  print(f"wrote {workdir / 'results.json'} and {len(overlays)} overlays", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
