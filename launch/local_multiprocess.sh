#!/usr/bin/env bash
# Runs a multi-process JAX job on this machine: N CPU processes, each with D simulated devices,
# joined through maskbit_jax.distributed (--coordinator_address localhost:PORT --num_processes N
# --process_id i are appended to the command). A rehearsal of a pod / multi-node run on a laptop.
#
#   launch/local_multiprocess.sh                                  # 2 x 4 devices, the default command
#   launch/local_multiprocess.sh -n 4 -d 2 -l /tmp/mp_logs -- \
#       python -m maskbit_jax.train --config configs/generator_tiny.py --workdir /tmp/mp_run
#
# Options:
#   -n N     processes (default 2)
#   -d D     simulated CPU devices per process (default 4), via XLA_FLAGS
#   -p PORT  coordinator port (default: a free one)
#   -l DIR   per-process logs process_<i>.log (default: a new temporary directory)
#   -t SEC   kill everything after SEC seconds (default 0: no limit)
#   -q       do not stream process 0's log to stdout
# Command (after --): default
#   ${PYTHON:-python3} -m maskbit_jax.train --config configs/tokenizer_tiny.py --workdir ${WORKDIR:-/tmp/maskbit_local_mp}
#
# Exit status: 0 when every process exits 0. As soon as one fails, the others are stopped and the
# script exits with that process's status after printing the end of its log.
set -euo pipefail

num=2
devices=4
port=""
log_dir=""
limit=0
quiet=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while getopts ":n:d:p:l:t:qh" opt; do
  case "$opt" in
    n) num="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    t) limit="$OPTARG" ;;
    q) quiet=1 ;;
    h) usage 0 ;;
    :) echo "option -$OPTARG needs a value" >&2; usage 2 ;;
    *) echo "unknown option -$OPTARG" >&2; usage 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift

for pair in "processes:$num" "devices per process:$devices" "time limit:$limit"; do
  value="${pair##*:}"
  if ! [[ "$value" =~ ^[0-9]+$ ]]; then
    echo "$0: ${pair%%:*} must be a non-negative integer, got '$value'" >&2; exit 2
  fi
done
if (( num < 1 || devices < 1 )); then
  echo "$0: need at least one process and one device per process (got -n $num -d $devices)" >&2; exit 2
fi

PYTHON="${PYTHON:-python3}"
if (( $# == 0 )); then
  set -- "$PYTHON" -m maskbit_jax.train --config configs/tokenizer_tiny.py --workdir "${WORKDIR:-/tmp/maskbit_local_mp}"
fi
if [[ -z "$port" ]]; then
  port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
if [[ -z "$log_dir" ]]; then
  log_dir="$(mktemp -d "${TMPDIR:-/tmp}/maskbit_mp.XXXXXX")"
fi
mkdir -p "$log_dir"

echo "launch: $num processes x $devices CPU devices, coordinator localhost:$port, logs in $log_dir" >&2
echo "launch: command: $*" >&2

pids=()
declare -A done_rc=()
tail_pid=""
cleanup() {  # stops only the processes this script started and that are still running
  local i
  for i in "${!pids[@]}"; do
    [[ -n "${done_rc[$i]:-}" ]] || kill "${pids[$i]}" 2>/dev/null || true
  done
  if [[ -n "$tail_pid" ]]; then kill "$tail_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# an inherited device count would override ours: drop it
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")"
for ((i = 0; i < num; i++)); do
  XLA_FLAGS="$xla_flags --xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    "$@" --coordinator_address "localhost:$port" --num_processes "$num" --process_id "$i" \
    >"$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
done
if (( ! quiet )); then
  tail -n +1 -F "$log_dir/process_0.log" 2>/dev/null &
  tail_pid=$!
fi

start=$SECONDS
running=$num
while (( running > 0 )); do
  for ((i = 0; i < num; i++)); do
    [[ -n "${done_rc[$i]:-}" ]] && continue
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      rc=0
      wait "${pids[$i]}" || rc=$?
      done_rc[$i]=$rc
      running=$((running - 1))
      if (( rc != 0 )); then
        sleep 0.5  # let the log stream catch up
        echo "launch: process $i failed with status $rc; stopping the others. End of its log:" >&2
        tail -n 30 "$log_dir/process_$i.log" >&2 || true
        exit "$rc"
      fi
    fi
  done
  if (( limit > 0 && SECONDS - start > limit )); then
    echo "launch: time limit of ${limit}s reached; stopping every process" >&2
    exit 124
  fi
  (( running > 0 )) && sleep 0.2
done
sleep 0.3  # the last lines of process 0's log
echo "launch: all $num processes finished (logs in $log_dir)" >&2
