#!/usr/bin/env bash
# Run the wsol_jax trainer as several JAX processes (one multi-process run).
#
#   launch/multihost.sh local N [--] TRAIN_ARGS...   N processes on this machine
#   launch/multihost.sh node [--] TRAIN_ARGS...      this host's process of a cluster run
#
# TRAIN_ARGS are those of `python -m wsol_jax.train` (--config, --workdir, --config.*).
# Every process runs launch/distributed_train.py: jax.distributed.initialize, then the
# trainer (which does not initialise the distributed runtime itself). The workdir must be
# one that every process sees: a gs:// URL (pip install -e '.[gcs]'), or the same path on a
# shared filesystem (NFS, Filestore, a bucket mounted with gcsfuse).
#
# Environment:
#   COORDINATOR       host:port of process 0 (local: localhost:$PORT; node: required
#                     unless Slurm or Open MPI provide it)
#   PORT              local mode: coordinator port (12355)
#   NUM_PROCESSES     node mode: total number of processes (auto under Slurm/Open MPI)
#   PROCESS_ID        node mode: this process's index, 0 on the coordinator host
#   GPUS_PER_PROCESS  local mode: process i sees GPUs i*k .. i*k+k-1 (CUDA_VISIBLE_DEVICES)
#   CPU_DEVICES       local mode: run on the CPU with this many fake devices per process
#   PYTHON            interpreter (python)
#   DRY_RUN=1         print the commands, run nothing
#
# Examples:
#   CPU_DEVICES=4 launch/multihost.sh local 2 --config configs/scm_synthetic.py --workdir /tmp/mh
#   GPUS_PER_PROCESS=1 launch/multihost.sh local 8 --config configs/scm_cub.py --workdir runs/scm
#   # on every host (host 0 at 10.0.0.2):
#   COORDINATOR=10.0.0.2:12355 NUM_PROCESSES=4 PROCESS_ID=$RANK \
#     launch/multihost.sh node --config configs/scm_ilsvrc.py --workdir gs://bucket/runs/scm_ilsvrc
#   # Slurm, one task per node:
#   srun --ntasks-per-node=1 launch/multihost.sh node --config ... --workdir /shared/runs/x
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
wrapper="$here/distributed_train.py"
python_bin="${PYTHON:-python}"

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

run() {  # prints the command (with its environment) when DRY_RUN=1, else runs it
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

[[ $# -ge 1 ]] || usage
mode="$1"
shift
cd "$repo"
export PYTHONUNBUFFERED=1

case "$mode" in
  local)
    [[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
    num="$1"
    shift
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -ge 1 ]] || usage
    coordinator="${COORDINATOR:-localhost:${PORT:-12355}}"
    pids=()
    stop() {  # SIGTERM makes the trainer save a checkpoint and exit; forward it
      trap - INT TERM
      echo "multihost: stopping ${#pids[@]} processes" >&2
      for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    }
    trap stop INT TERM
    for ((i = 0; i < num; i++)); do
      env_vars=(JAX_COORDINATOR_ADDRESS="$coordinator" JAX_NUM_PROCESSES="$num" JAX_PROCESS_ID="$i")
      if [[ -n "${CPU_DEVICES:-}" ]]; then
        env_vars+=(JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
                   XLA_FLAGS="--xla_force_host_platform_device_count=$CPU_DEVICES")
      elif [[ -n "${GPUS_PER_PROCESS:-}" ]]; then
        first=$((i * GPUS_PER_PROCESS))
        env_vars+=(CUDA_VISIBLE_DEVICES="$(seq -s, "$first" $((first + GPUS_PER_PROCESS - 1)))")
      fi
      if [[ "${DRY_RUN:-0}" == 1 ]]; then
        run env "${env_vars[@]}" "$python_bin" "$wrapper" "$@"
        continue
      fi
      env "${env_vars[@]}" "$python_bin" "$wrapper" "$@" \
        > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
      pids+=("$!")
    done
    status=0
    for pid in "${pids[@]}"; do
      while true; do  # a trapped signal interrupts `wait`; wait again until the process ends
        code=0
        wait "$pid" || code=$?
        kill -0 "$pid" 2>/dev/null || break
      done
      if [[ $code -ne 0 && $status -eq 0 ]]; then
        status=$code
      fi
    done
    exit "$status"
    ;;
  node)
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -ge 1 ]] || usage
    env_vars=()
    [[ -n "${COORDINATOR:-}" ]] && env_vars+=(JAX_COORDINATOR_ADDRESS="$COORDINATOR")
    [[ -n "${NUM_PROCESSES:-}" ]] && env_vars+=(JAX_NUM_PROCESSES="$NUM_PROCESSES")
    [[ -n "${PROCESS_ID:-}" ]] && env_vars+=(JAX_PROCESS_ID="$PROCESS_ID")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
      run env "${env_vars[@]}" "$python_bin" "$wrapper" "$@"
      exit 0
    fi
    exec env "${env_vars[@]}" "$python_bin" "$wrapper" "$@"
    ;;
  *)
    usage
    ;;
esac
