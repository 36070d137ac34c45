"""Train a WSOL method: ``python -m wsol_jax.train --config configs/scm_cub.py --workdir DIR``.

Config overrides: ``--config.optimizer.lr=1e-4 --config.training.batch_size=64`` (an
unknown or mistyped key fails before any compute, naming the closest valid keys).
Re-running the same command resumes from the latest checkpoint in ``--workdir``;
SIGTERM saves a checkpoint and exits cleanly.

Exit codes: 0 trained and evaluated; 1 the run failed (a message says why; checkpoints
written so far are intact); 2 a bad command line or config (nothing was run or written);
75 (``EXIT_PREEMPTED``, EX_TEMPFAIL) stopped by SIGTERM after saving a checkpoint: re-run
the same command to resume.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from wsol_jax import config_lib

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a scheduler can tell a preemption from a finished run


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m wsol_jax.train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/<method>_<dataset>.py[:arg]")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and results go "
                      "here: a directory or a gs:// URL")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument {item!r} (overrides look like --config.a.b=value)")
    overrides.append(item[len("--config."):])
  return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  try:
    config = config_lib.load(args.config, overrides)
    workdir = config_lib.dir_path(args.workdir, "--workdir")
    from wsol_jax import cpu
    runtime = cpu.install(config)  # before anything starts JAX's backend
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from wsol_jax import reporting, trainer
  try:
    results = trainer.train_and_evaluate(config, workdir, runtime)
  except config_lib.ConfigError as e:  # e.g. a resume with another architecture
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (trainer.NonFiniteLossError, trainer.ckpt_lib.CheckpointError,
          trainer.data_lib.UnreadableDataError, trainer.data_lib.MetadataError,
          trainer.data_lib.MetadataNotFoundError, trainer.data_lib.DatasetNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    reporting.record_error(f"error: {e}")  # train.log keeps it too
    return 1
  if results is None:
    return 1
  return EXIT_PREEMPTED if "preempted_at_step" in results else 0


if __name__ == "__main__":
  sys.exit(main())
