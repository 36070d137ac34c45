"""``python -m wsol_jax.train`` preceded by ``jax.distributed.initialize`` (multi-process runs).

  python launch/distributed_train.py --config configs/scm_cub.py --workdir DIR|gs://BUCKET/RUN [--config.a.b=v ...]

The trainer does not start JAX's distributed runtime itself; this wrapper does, then
calls ``wsol_jax.train.main`` with the same arguments. The runtime's arguments come from
the environment: ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and optionally ``JAX_LOCAL_DEVICE_IDS``; unset
ones are detected by JAX on Cloud TPU, Slurm and Open MPI.
"""
import os
import sys


def _env_int(name):
  value = os.environ.get(name, "")
  return int(value) if value else None


def main(argv):
  import jax  # the trainer's cpu.install (config.cpu_tuning) runs after this, before any backend
  jax.distributed.initialize(
      coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
      num_processes=_env_int("JAX_NUM_PROCESSES"),
      process_id=_env_int("JAX_PROCESS_ID"))
  print(f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices",
        file=sys.stderr, flush=True)
  from wsol_jax import train
  return train.main(argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
