#!/usr/bin/env bash
# Cloud TPU VM pod slice: create it, install maskbit_jax on every worker, run one command on all
# workers at once, follow the logs, stop, delete. Every host runs the same command; inside it
# maskbit_jax.distributed detects the TPU slice and joins the job (no coordinator flags needed).
#
#   export TPU_NAME=maskbit-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 RUNTIME=v2-alpha-tpuv5
#   launch/tpu_pod.sh create                       # add SPOT=1 for a spot slice
#   launch/tpu_pod.sh setup                        # copy this checkout (SOURCE=copy, default) and pip install
#   SOURCE=git REPO_URL=https://github.com/you/maskbit_jax REF=main launch/tpu_pod.sh setup
#   WORKDIR=gs://my-bucket/runs/gen12 launch/tpu_pod.sh run     # the default training command, in background
#   launch/tpu_pod.sh run -- python -m maskbit_jax.train --config configs/maskbit_generator_14bit.py \
#       --workdir gs://my-bucket/runs/gen14
#   launch/tpu_pod.sh logs [WORKER]                # follow worker 0's (or WORKER's) log
#   launch/tpu_pod.sh ssh [WORKER] -- CMD          # one-off command (default: all workers)
#   launch/tpu_pod.sh stop                         # stop the run started by `run` (by its saved pid)
#   launch/tpu_pod.sh delete
#
# Environment: TPU_NAME, ZONE, ACCELERATOR (create), RUNTIME (create; v5p: v2-alpha-tpuv5,
# v6e: v2-alpha-tpuv6e), PROJECT (default: gcloud's), SPOT=1, SOURCE=copy|git, REPO_URL, REF,
# WORKDIR (default command; on a pod it must be shared storage such as gs://, since every host
# writes its shards of the checkpoint), CONFIG (default configs/maskbit_generator_12bit.py),
# REMOTE_DIR (default maskbit_jax, under the workers' home), PIP_EXTRA (more pip packages).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
need() {
  local v
  for v in "$@"; do
    if [[ -z "${!v:-}" ]]; then echo "$0: set $v (see $0 -h)" >&2; exit 2; fi
  done
}

REMOTE_DIR="${REMOTE_DIR:-maskbit_jax}"
LOG_DIR_REMOTE="maskbit_logs"
gcloud_tpu() {
  need TPU_NAME ZONE
  gcloud compute tpus tpu-vm "$1" "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} "${@:2}"
}
on_workers() {  # on_workers WORKER COMMAND: WORKER is "all" or an index
  gcloud_tpu ssh --worker="$1" --command "$2"
}
quote() { printf '%q ' "$@"; }

cmd_create() {
  need ACCELERATOR RUNTIME
  gcloud_tpu create --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ${SPOT:+--spot}
}

cmd_setup() {
  local source="${SOURCE:-copy}"
  # the package (with its pinned jax), then libtpu for exactly that jax
  local install="python3 -m pip install -q -U pip && python3 -m pip install -q -e . ${PIP_EXTRA:-} && \
    python3 -m pip install -q \"jax[tpu]==\$(python3 -c 'import jax; print(jax.__version__)')\""
  case "$source" in
    copy)
      local repo tarball
      repo="$(cd "$(dirname "$0")/.." && pwd)"
      tarball="$(mktemp "${TMPDIR:-/tmp}/maskbit_src.XXXXXX.tgz")"
      # tracked and new (not ignored) files of this checkout: what you run is what you have
      (cd "$repo" && git ls-files -co --exclude-standard -z | tar --null -czf "$tarball" -T -)
      need TPU_NAME ZONE
      gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:maskbit_src.tgz" --worker=all --zone "$ZONE" \
        ${PROJECT:+--project "$PROJECT"}
      rm -f "$tarball"
      on_workers all "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR ~/$LOG_DIR_REMOTE && \
        tar -xzf ~/maskbit_src.tgz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && $install"
      ;;
    git)
      need REPO_URL
      on_workers all "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$LOG_DIR_REMOTE && \
        git clone -q $(quote "$REPO_URL") ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && git checkout -q $(quote "${REF:-main}") && \
        $install"
      ;;
    *) echo "$0: SOURCE must be copy or git, got '$source'" >&2; exit 2 ;;
  esac
  on_workers all "cd ~/$REMOTE_DIR && python3 -c 'import jax, maskbit_jax; print(jax.devices()[:1], jax.local_device_count())'"
}

cmd_run() {
  local command
  if (( $# == 0 )); then
    need WORKDIR
    command="$(quote python3 -m maskbit_jax.train --config "${CONFIG:-configs/maskbit_generator_12bit.py}" \
      --workdir "$WORKDIR")"
  else
    command="$(quote "$@")"
  fi
  echo "running on every worker of $TPU_NAME: $command" >&2
  # in the background (survives a dropped ssh); the pid is kept for `stop`, the log for `logs`
  on_workers all "cd ~/$REMOTE_DIR && mkdir -p ~/$LOG_DIR_REMOTE && \
    (nohup $command > ~/$LOG_DIR_REMOTE/run.log 2>&1 & echo \$! > ~/$LOG_DIR_REMOTE/run.pid) && \
    echo \"worker \$(hostname): started pid \$(cat ~/$LOG_DIR_REMOTE/run.pid)\""
}

cmd_logs() {
  on_workers "${1:-0}" "tail -n 200 -F ~/$LOG_DIR_REMOTE/run.log"
}

cmd_ssh() {
  local worker=all
  if [[ $# -gt 0 && "$1" != "--" ]]; then worker="$1"; shift; fi
  [[ "${1:-}" == "--" ]] && shift
  (( $# > 0 )) || { echo "$0 ssh: give a command after --" >&2; exit 2; }
  on_workers "$worker" "cd ~/$REMOTE_DIR 2>/dev/null; $(quote "$@")"
}

cmd_stop() {
  on_workers all "f=~/$LOG_DIR_REMOTE/run.pid; if [ -f \$f ] && kill -0 \$(cat \$f) 2>/dev/null; then \
    kill \$(cat \$f) && echo \"worker \$(hostname): stopped \$(cat \$f)\"; else echo \"worker \$(hostname): nothing running\"; fi"
}

cmd_delete() {
  gcloud_tpu delete --quiet
}

cmd_status() {
  gcloud_tpu describe --format='value(state,acceleratorType,networkEndpoints[].ipAddress)'
}

(( $# > 0 )) || usage 2
sub="$1"; shift
[[ "${1:-}" == "--" && "$sub" == "run" ]] && shift
case "$sub" in
  create|setup|run|logs|ssh|stop|delete|status) "cmd_$sub" "$@" ;;
  -h|--help|help) usage 0 ;;
  *) echo "$0: unknown command '$sub'" >&2; usage 2 ;;
esac
