"""Shared helpers for the benchmarks: timing, machine description, results files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from typing import Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def results_dir() -> str:
  """Where results files go: ``MASKBIT_BENCH_RESULTS`` if set (smoke runs), else ``benchmarks/results``."""
  return os.environ.get("MASKBIT_BENCH_RESULTS") or RESULTS_DIR


def time_call(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> dict:
  """Median / min wall time of ``fn()`` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return dict(median_s=statistics.median(times), min_s=min(times), repeats=repeats)


def machine() -> dict:
  import jax

  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(RESULTS_DIR)).stdout.strip()
  except OSError:
    commit = ""
  import flax
  import numpy

  return dict(host=platform.node(), cpu=cpu, cpu_count=os.cpu_count(), platform=dev.platform,
              device=getattr(dev, "device_kind", str(dev)), device_count=jax.device_count(),
              python=platform.python_version(), jax=jax.__version__, flax=flax.__version__,
              numpy=numpy.__version__, commit=commit)


def peak_memory_bytes() -> dict:
  """Peak device memory (accelerators) and peak host RSS of this process."""
  import jax

  out = dict(host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def append_result(name: str, record: dict) -> str:
  """Appends one JSON line to ``benchmarks/results/<name>.jsonl`` and returns the path."""
  os.makedirs(results_dir(), exist_ok=True)
  path = os.path.join(results_dir(), f"{name}.jsonl")
  record = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record)
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
  return path


# ---------------------------------------------------------------------------------------------- the reference side

def torch_device(requested: str | None = None) -> str:
  """``requested``, else ``cuda`` when torch sees a GPU, else ``cpu``: the reference runs where ours does."""
  import torch

  return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def reference_dtypes(dtypes, device: str) -> list[str]:
  """The precisions to time the reference at: each of ours, except bfloat16 on a CPU (autocast there is
  not how anyone runs it, and slower than float32 on most CPUs)."""
  return [d for d in dtypes if d == "float32" or device != "cpu"]


def allow_reference_tf32(device: str) -> None:
  """TF32 for the reference's float32 products on CUDA, as its own train/eval scripts set it
  (``training.enable_tf32``) and as JAX's default precision does on recent GPUs."""
  import torch

  if torch.device(device).type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def torch_precision(device: str, dtype: str):
  """The reference's compute at ``dtype`` on ``device``, as a context.

  float32 runs as the reference's own scripts run it: TF32 allowed on CUDA, which is also what
  JAX's default precision does with float32 products on recent GPUs (equal precision).
  bfloat16 runs under ``torch.autocast``, against our bfloat16 compute.
  """
  import torch

  kind = torch.device(device).type
  allow_reference_tf32(device)
  if dtype == "float32":
    return contextlib.nullcontext()
  if dtype != "bfloat16":
    raise ValueError(f"reference dtype {dtype!r}: choose float32 or bfloat16")
  return torch.autocast(device_type=kind, dtype=torch.bfloat16)


def torch_sync(device: str) -> None:
  """Waits for the reference's queued CUDA work, so that a timing covers it."""
  import torch

  if torch.device(device).type == "cuda":
    torch.cuda.synchronize()
