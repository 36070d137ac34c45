#!/usr/bin/env bash
# Train wsol_jax on a Cloud TPU VM with `gcloud compute tpus tpu-vm`.
#
#   launch/tpu_vm.sh create              create the TPU VM (nothing happens if it exists)
#   launch/tpu_vm.sh setup               put the repo on every worker and install it
#   launch/tpu_vm.sh train [OVERRIDES]   run the trainer on every worker (--worker=all)
#   launch/tpu_vm.sh ssh                 open a shell on worker 0
#   launch/tpu_vm.sh delete              delete the TPU VM
#   launch/tpu_vm.sh all [OVERRIDES]     create, setup, train
#
# OVERRIDES are trainer overrides, e.g. --config.model.pretrained=ckpt/deit_s.
#
# Settings (environment variables, defaults in brackets):
#   TPU_NAME          [wsol-tpu]
#   ZONE              [us-central2-b]
#   ACCELERATOR_TYPE  [v4-8]  (one host; v4-32 etc. are multi-host slices, see launch/README.md)
#   RUNTIME_VERSION   [tpu-ubuntu2204-base]
#   PROJECT           [gcloud's default project]
#   SPOT              [0]  1 = create a Spot TPU VM
#   REPO_URL          [empty]  git URL to clone on the workers; empty = copy this checkout
#   REPO_REF          [HEAD]  branch/tag/commit of REPO_URL to check out
#   REMOTE_DIR        [wsol_jax]  repo directory on the workers (relative to $HOME)
#   PYTHON_VERSION    [3.11]  Python of the workers' virtual environment (JAX needs >= 3.11)
#   CONFIG            [configs/scm_synthetic.py]  config[:variants], relative to the repo
#   RUN_NAME          [basename of CONFIG without .py]
#   BUCKET            [empty]  gs://bucket for the workdir: the trainer writes to
#                     $BUCKET/runs/$RUN_NAME directly (etils epath + gcsfs; Orbax's arrays
#                     with TensorStore's GCS driver)
#   GCSFUSE           [0]  1 = instead mount BUCKET with gcsfuse at MOUNT on every worker and
#                     use $MOUNT/runs/$RUN_NAME (a filesystem path)
#   MOUNT             [/mnt/wsol]
#   WORKDIR           [$BUCKET/runs/$RUN_NAME with BUCKET ($MOUNT/runs/$RUN_NAME with
#                     GCSFUSE=1), else runs/$RUN_NAME in the repo directory of each worker]:
#                     a gs:// URL or a filesystem path. Multi-host slices need one that every
#                     worker shares (a gs:// URL, or a shared mount).
#   DETACH            [0]  1 = run the trainer under nohup (log: ~/wsol_train.log on each worker)
set -euo pipefail

TPU_NAME="${TPU_NAME:-wsol-tpu}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
REMOTE_DIR="${REMOTE_DIR:-wsol_jax}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
CONFIG="${CONFIG:-configs/scm_synthetic.py}"
RUN_NAME="${RUN_NAME:-$(basename "${CONFIG%%:*}" .py)}"
BUCKET="${BUCKET:-}"
BUCKET="${BUCKET%/}"
GCSFUSE="${GCSFUSE:-0}"
MOUNT="${MOUNT:-/mnt/wsol}"
DETACH="${DETACH:-0}"
if [[ -n "$BUCKET" && "$GCSFUSE" == 1 ]]; then
  WORKDIR="${WORKDIR:-$MOUNT/runs/$RUN_NAME}"
elif [[ -n "$BUCKET" ]]; then
  WORKDIR="${WORKDIR:-$BUCKET/runs/$RUN_NAME}"
else
  WORKDIR="${WORKDIR:-runs/$RUN_NAME}"  # relative to the repo directory on each worker
fi
case "$BUCKET" in
  ""|gs://*) ;;
  *) echo "BUCKET must be a gs:// URL, got $BUCKET" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="\$HOME/wsol-venv"

gcloud_tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND [ARGS] with the zone (and project)
  local sub="$1"
  shift
  local flags=(--zone="$ZONE")
  [[ -n "$PROJECT" ]] && flags+=(--project="$PROJECT")
  gcloud compute tpus tpu-vm "$sub" "$@" "${flags[@]}"
}

on_workers() {  # runs a bash command on every worker
  gcloud_tpu ssh "$TPU_NAME" --worker=all --command="bash -lc $(printf '%q' "set -euo pipefail; $1")"
}

create() {
  if gcloud_tpu describe "$TPU_NAME" > /dev/null 2>&1; then
    echo "TPU VM $TPU_NAME exists in $ZONE"
    return
  fi
  local flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  [[ "$SPOT" == 1 ]] && flags+=(--spot)
  gcloud_tpu create "$TPU_NAME" "${flags[@]}"
}

put_repo() {
  if [[ -n "$REPO_URL" ]]; then
    local ref
    ref="$(printf '%q' "${REPO_REF:-HEAD}")"
    on_workers "cd \$HOME; [ -d $REMOTE_DIR/.git ] || git clone $(printf '%q' "$REPO_URL") $REMOTE_DIR
      git -C $REMOTE_DIR fetch origin $ref && git -C $REMOTE_DIR checkout --detach FETCH_HEAD"
  else
    # Tracked and untracked-but-not-ignored files of this checkout (no .venv, no caches).
    local tmp tarball
    tmp="$(mktemp -d)"
    tarball="$tmp/wsol_jax.tgz"
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
      | xargs -0 -I{} sh -c 'test -e "$1" && printf "%s\0" "$1"' _ {} \
      | tar --null -czf "$tarball" -T -)
    gcloud_tpu scp "$tarball" "$TPU_NAME:wsol_jax.tgz" --worker=all
    rm -rf "$tmp"
    on_workers "mkdir -p \$HOME/$REMOTE_DIR && tar -xzf \$HOME/wsol_jax.tgz -C \$HOME/$REMOTE_DIR"
  fi
}

install() {
  # uv provides a Python >= 3.11 (the TPU images ship 3.10); pip then installs the repo and
  # JAX's TPU build (libtpu).
  on_workers "python3 -m pip --version > /dev/null 2>&1 || { sudo apt-get update -q && sudo apt-get install -y -q python3-pip; }
    python3 -m pip install --user --quiet uv
    \$HOME/.local/bin/uv venv --seed --allow-existing --python $PYTHON_VERSION $venv
    cd \$HOME/$REMOTE_DIR
    $venv/bin/python -m pip install --quiet -e '.[gcs]' 'jax[tpu]'
    $venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].platform)'"
}

mount_bucket() {  # only with GCSFUSE=1: a gs:// workdir needs no mount
  [[ -n "$BUCKET" && "$GCSFUSE" == 1 ]] || return 0
  local name="${BUCKET#gs://}"
  name="${name%%/*}"
  # gcsfuse from Google's apt repository; --rename-dir-limit lets Orbax and the exporter
  # rename their temporary directories into place.
  on_workers "if ! command -v gcsfuse > /dev/null; then
      repo_name=gcsfuse-\$(lsb_release -c -s)
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null
      echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$repo_name main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null
      sudo apt-get update -q && sudo apt-get install -y -q fuse gcsfuse
    fi
    sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
    mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=100000 $name $MOUNT"
}

setup() {
  put_repo
  install
  mount_bucket
}

train() {
  local overrides=""
  [[ $# -gt 0 ]] && overrides="$(printf '%q ' "$@")"
  local cmd="$venv/bin/python -m wsol_jax.train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR") $overrides"
  local workers
  workers="$(gcloud_tpu describe "$TPU_NAME" --format='value(networkEndpoints.len())')"
  [[ "$workers" =~ ^[0-9]+$ ]] || workers=1
  if [[ "${workers:-1}" -gt 1 ]]; then
    # Multi-host slice: start JAX's distributed runtime first (arguments auto-detected).
    # See launch/README.md for what runs across processes and the limits that remain.
    case "$WORKDIR" in
      gs://*) ;;
      *) [[ "$GCSFUSE" == 1 ]] || echo "warning: $workers workers and WORKDIR=$WORKDIR: it must be a path every worker shares (or set BUCKET)" >&2 ;;
    esac
    cmd="$venv/bin/python launch/distributed_train.py --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR") $overrides"
  fi
  if [[ "$DETACH" == 1 ]]; then
    on_workers "cd \$HOME/$REMOTE_DIR; nohup $cmd > \$HOME/wsol_train.log 2>&1 < /dev/null & echo started on \$(hostname): \$HOME/wsol_train.log"
  else
    on_workers "cd \$HOME/$REMOTE_DIR; $cmd"
  fi
}

[[ $# -ge 1 ]] || { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
action="$1"
shift
case "$action" in
  create) create ;;
  setup) setup ;;
  train) train "$@" ;;
  ssh) gcloud_tpu ssh "$TPU_NAME" --worker=0 ;;
  delete) gcloud_tpu delete "$TPU_NAME" --quiet ;;
  all) create; setup; train "$@" ;;
  *) echo "unknown action $action (create, setup, train, ssh, delete, all)" >&2; exit 2 ;;
esac
