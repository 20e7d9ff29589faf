"""The speed targets the project set itself, checked against the newest figures in benchmarks/results/.

  python benchmarks/targets.py                   # every device that has figures
  python benchmarks/targets.py --device H100     # one device kind (a substring of the record's device)

Each target names a results file, the records that count (config, precision, size) and a
threshold. On each device, the newest record of each setting (config, batch, stage) counts,
and the worst of them decides: a target holds only where it holds at every batch measured. A target with no record
on a device is reported as unmeasured there, never as met. Prints a markdown table; the exit
status is 1 when a measured target is missed (``--strict``), else 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import results_dir  # noqa: E402



@dataclasses.dataclass(frozen=True)
class Target:
  """``value(record)`` (None: the record does not count) compared with ``threshold`` on ``devices``."""
  name: str
  results: str                      # file stem under benchmarks/results/
  value: Callable[[dict], float | None]
  threshold: float
  unit: str
  devices: tuple[str, ...] = ()     # device-kind substrings it applies to; () = every device


def _machine(record: dict) -> dict:
  return record.get("machine", record)  # train.jsonl spreads the machine fields into the record


def _sampling(dtype: str, what: str, batch: int | None = None):
  def value(r):
    if r.get("config") != "maskbit_generator_12bit.py" or r.get("num_steps") != 64:
      return None
    if batch is not None and r.get("batch") != batch:
      return None
    if what == "img/s":
      return r.get("jax", {}).get(dtype, {}).get("images_per_s")
    return r.get(f"ratio_ours_over_reference_{dtype}")
  return value


def _bar(config: str, dtype: str, what: str, batch: int | None = None):
  def value(r):
    if r.get("config") != config or (batch is not None and r.get("batch") != batch):
      return None
    if what == "img/s":
      return r.get("jax", {}).get(dtype, {}).get("images_per_s")
    return r.get(f"ratio_ours_over_reference_{dtype}")
  return value


def _generator_mfu(r):
  if r.get("stage") != "generator" or r.get("dtype") != "bfloat16" or r.get("reduced"):
    return None
  return r.get("mfu_estimate")


def _train_ratio(row: str):
  def value(r):
    if r.get("reduced"):
      return None
    return next((x["ratio_ours_over_reference"] for x in r.get("rows", ()) if x.get("row") == row), None)
  return value


GPU = ("H100", "H200")
TARGETS = (
    Target("MaskBit sampling, 64 guided steps + decode, bf16, batch 32", "sampling",
           _sampling("bfloat16", "img/s", 32), 20.0, "img/s", GPU),
    Target("MaskBit sampling vs reference, float32 (TF32 both)", "sampling", _sampling("float32", "ratio"), 1.5,
           "x", GPU),
    Target("MaskBit sampling vs reference, bf16", "sampling", _sampling("bfloat16", "ratio"), 1.5, "x", GPU),
    Target("MaskBit sampling vs reference, float32, CPU", "sampling", _sampling("float32", "ratio"), 1.0, "x",
           ("cpu",)),
    Target("Generator training MFU, bf16, full size", "train", _generator_mfu, 0.45, "MFU", GPU),
    Target("Tokenizer training vs reference, full size", "compare_reference", _train_ratio("train_tokenizer"), 1.5,
           "x"),
    Target("BAR-B/4 sampling, bf16, batch 125", "bar_sampling", _bar("bar_b_patch4", "bfloat16", "img/s", 125), 445.0,
           "img/s", GPU),
    Target("BAR-B sampling, bf16, batch 125", "bar_sampling", _bar("bar_b", "bfloat16", "img/s", 125), 24.0,
           "img/s", GPU),
    Target("BAR-B/4 sampling vs reference, bf16", "bar_sampling", _bar("bar_b_patch4", "bfloat16", "ratio"), 1.5,
           "x", GPU),
    Target("BAR-B sampling vs reference, bf16", "bar_sampling", _bar("bar_b", "bfloat16", "ratio"), 1.5, "x", GPU),
    Target("BAR sampling vs reference, float32, CPU", "bar_sampling",
           lambda r: r.get("ratio_ours_over_reference_float32"), 1.0, "x", ("cpu",)),
)


def read_records(results_dir: str, stem: str) -> Iterator[dict]:
  """The records of ``<stem>.jsonl`` in file order; a line that is not JSON is named and stops the report."""
  path = os.path.join(results_dir, f"{stem}.jsonl")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise SystemExit(f"{path}:{number}: not a JSON record ({e})") from None


def _applies(target: Target, device: str) -> bool:
  return not target.devices or any(d.lower() in device.lower() for d in target.devices)


def evaluate(results_dir: str, device_filter: str | None = None) -> list[dict]:
  """One row per (target, device): the worst value over the newest record of each setting, or unmeasured."""
  records = {t.results: list(read_records(results_dir, t.results)) for t in TARGETS}
  devices = sorted({_machine(r).get("device", "?") for rs in records.values() for r in rs})
  if device_filter:
    devices = [d for d in devices if device_filter.lower() in d.lower()] or [device_filter]
  rows = []
  for target in TARGETS:
    for device in devices:
      if not _applies(target, device):
        continue
      # The files are append-only: per setting (config, batch, stage) the last counting record is the
      # newest; a target must hold at every setting measured, so the worst of those decides.
      newest = {}
      for r in records[target.results]:
        if _machine(r).get("device") == device and target.value(r) is not None:
          newest[r.get("config"), r.get("batch"), r.get("stage"), r.get("reduced")] = r
      row = dict(target=target.name, device=device, threshold=target.threshold, unit=target.unit, value=None,
                 settings=len(newest), status="unmeasured", time=None, commit=None)
      if newest:
        worst = min(newest.values(), key=lambda r: float(target.value(r)))
        value = float(target.value(worst))
        row.update(value=value, status="met" if value >= target.threshold else "missed", time=worst.get("time"),
                   commit=_machine(worst).get("commit"))
      rows.append(row)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| target | device | needed | measured (worst of n settings) | status | when (commit) |",
           "|---|---|---:|---:|---|---|"]
  for r in rows:
    measured = "-" if r["value"] is None else f"{r['value']:.3g} {r['unit']} (n={r['settings']})"
    when = "-" if r["time"] is None else f"{r['time']} ({r['commit'] or '?'})"
    lines.append(f"| {r['target']} | {r['device']} | {r['threshold']:g} {r['unit']} | {measured} | {r['status']} "
                 f"| {when} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--device", help="only devices whose kind contains this (e.g. H100, cpu)")
  p.add_argument("--results", default=None,
                 help="folder of the .jsonl results files (default: $MASKBIT_BENCH_RESULTS or benchmarks/results)")
  p.add_argument("--strict", action="store_true", help="exit 1 when a measured target is missed")
  args = p.parse_args(argv)
  rows = evaluate(args.results or results_dir(), args.device)
  print(markdown(rows))
  return 1 if args.strict and any(r["status"] == "missed" for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
