#!/usr/bin/env bash
# Everything that needs an accelerator, in one go, on the GPU or TPU this runs on:
#   1. the parity tests against the golden fixtures, at float32 "highest" (tests/conftest.py sets
#      JAX_DEFAULT_MATMUL_PRECISION), on the accelerator instead of the CPU;
#   2. the speed benchmarks at full size, float32 and bfloat16, beside the PyTorch references
#      when their checkouts are given (torch runs them on CUDA when it sees a GPU);
#   3. the targets table (benchmarks/targets.py) for this device.
# Figures are appended to benchmarks/results/*.jsonl as usual. One failing step does not stop the
# others; the exit status says whether any failed.
#
#   benchmarks/accelerator.sh [--maskbit-ref DIR] [--bar-ref DIR] [--results DIR] [--quick]
#
# --maskbit-ref: checkout of github.com/markweberdev/maskbit (modeling/, configs/)
# --bar-ref:     checkout of github.com/amazon-far/BAR at the release commit (modeling/, configs/)
# --results:     where the figures go (default benchmarks/results; with --quick a temporary folder)
# --quick:       one repeat, batch 1 or 2 (a smoke run of this script: its figures are not to be quoted,
#                so they stay out of benchmarks/results unless --results names it)
set -uo pipefail
cd "$(dirname "$0")/.."

maskbit_ref="" bar_ref="" results="" quick=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --maskbit-ref) maskbit_ref="$2"; shift 2 ;;
    --bar-ref) bar_ref="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for dir in "$maskbit_ref" "$bar_ref"; do
  if [[ -n "$dir" && ! -d "$dir/modeling" ]]; then
    echo "$dir: no modeling/ folder; pass a checkout of the reference" >&2; exit 2
  fi
done
if [[ $quick == 1 && -z "$results" ]]; then
  results="$(mktemp -d)"
fi
if [[ -n "$results" ]]; then
  export MASKBIT_BENCH_RESULTS="$results"
fi
echo "results: ${MASKBIT_BENCH_RESULTS:-benchmarks/results}"
PY="${PYTHON:-python}"
device="$("$PY" -c 'import jax; print(jax.devices()[0].device_kind)')" || exit 1
echo "device: $device"

failed=()
step() {  # step NAME CMD...: runs CMD, remembers NAME when it fails
  local name="$1"; shift
  echo; echo "== $name: $*"
  "$@" || failed+=("$name")
}

repeats=3 sampling_batches=1,8,32 bar_batches=1,125 small=()
if [[ $quick == 1 ]]; then  # the reduced widths of benchmarks/train.py, sampling extrapolated from 1 and 2 steps
  repeats=1 sampling_batches=1 bar_batches=1 small=(--reduced)
fi
extrapolate=()
[[ $quick == 1 ]] && extrapolate=(--measure-steps 2)

# The golden-fixture suites that run on any one device (the multi-device sharding tests stay on
# the simulated CPU mesh of the default suite).
step parity "$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/test_tokenizer_parity.py tests/test_taming_parity.py tests/test_quantizers.py \
  tests/test_tokenizer_api.py tests/test_entropy_chunking.py tests/test_discriminator.py \
  tests/test_vqgan_loss.py tests/test_perceptual.py tests/test_inception.py tests/test_optim.py \
  tests/test_generator_parity.py tests/test_mlm_loss.py tests/test_sampler.py \
  tests/test_bar_generator.py tests/test_bar_tokenizer.py tests/test_bar_loss.py tests/test_bar_sampler.py

step tokenizer "$PY" benchmarks/tokenizer.py --repeats "$repeats" ${maskbit_ref:+--reference-dir "$maskbit_ref"}
step sampling "$PY" benchmarks/sampling.py --batches "$sampling_batches" --repeats "$repeats" "${extrapolate[@]}" \
  ${maskbit_ref:+--reference-dir "$maskbit_ref"}
step train_bf16 "$PY" -m benchmarks.train --dtype bfloat16 --repeats "$repeats" "${small[@]}"
if [[ -n "$maskbit_ref" ]]; then
  for dtype in float32 bfloat16; do
    step "compare_reference_$dtype" "$PY" benchmarks/compare_reference.py --reference "$maskbit_ref" \
      --rows encode,decode,forward,train_tokenizer,train_generator --dtype "$dtype" --repeats "$repeats" "${small[@]}"
  done
fi
step bar_sampling "$PY" benchmarks/bar_sampling.py --batches "$bar_batches" --repeats "$repeats" \
  ${bar_ref:+--reference "$bar_ref"}

echo
"$PY" benchmarks/targets.py --device "$device"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed steps: ${failed[*]}" >&2
  exit 1
fi
