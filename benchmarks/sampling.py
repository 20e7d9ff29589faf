"""Full-size guided MaskGIT sampling (generator + decode): images/s and peak memory.

  python benchmarks/sampling.py                          # 12-bit release, 64 steps, batches 1,8,32
  python benchmarks/sampling.py --batches 1,4 --measure-steps 2 --reference-dir /path/to/maskbit

Weights are random (speed does not depend on them). ``--measure-steps k``
times k-step and 1-step runs and extrapolates to ``--num_steps``:
t(S) = t(1) + (S - 1) * (t(k) - t(1)) / (k - 1), which keeps CPU runs short;
the record says when a figure is extrapolated. With ``--reference-dir`` the
PyTorch reference ``sample()`` runs on the same machine, batch and settings, its
runs interleaved with ours; each figure is the minimum over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (append_result, machine, peak_memory_bytes, reference_dtypes, torch_device,  # noqa: E402
                               torch_precision, torch_sync)
from benchmarks.tokenizer import _stub_torchvision_if_missing  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extrapolate(t1: float, tk: float, k: int, steps: int) -> float:
  return t1 + (steps - 1) * (tk - t1) / (k - 1)


def jax_runner(config: str, batch: int, dtype: str):
  """``run(num_steps)``: one full sampling call (blocking) of maskbit_jax at ``batch``."""
  import jax

  import maskbit_jax

  tok = maskbit_jax.load_tokenizer(config, random_init=True, dtype=dtype)
  gen = maskbit_jax.load_generator(config, random_init=True, dtype=dtype)
  labels = np.arange(batch) % gen.nclass

  def run(num_steps):
    out = maskbit_jax.sample(gen, tok, labels, jax.random.key(0), num_steps=num_steps)
    jax.block_until_ready(out["images"])

  return run


def reference_runners(reference_dir: str, batch: int, settings: dict, device: str, dtypes):
  """``{dtype: run(num_steps)}`` for the PyTorch reference ``sample()`` on the same settings, on ``device``."""
  import torch

  sys.path.insert(0, reference_dir)
  _stub_torchvision_if_missing()
  from modeling.bert import LFQBert
  from modeling.conv_vqgan import ConvVQModel
  from modeling.modules.sampling import sample as ref_sample
  from omegaconf import OmegaConf

  torch.set_num_threads(os.cpu_count() or 1)
  cfg = OmegaConf.load(os.path.join(reference_dir, "configs/generator/maskbit_generator_12bit.yaml"))
  vq = cfg.model.vq_model
  vq.codebook_size = 2**vq.token_size
  tok = ConvVQModel(vq).eval().to(device)
  mlm = cfg.model.mlm_model
  gen = LFQBert(img_size=256, hidden_dim=mlm.hidden_dim, codebook_size=vq.codebook_size,
                codebook_splits=mlm.codebook_splits, depth=mlm.depth, heads=mlm.heads, mlp_dim=mlm.mlp_dim,
                dropout=mlm.dropout, use_prenorm=mlm.use_prenorm).eval().to(device)
  labels = (torch.arange(batch) % 1000).to(device)

  def runner(dtype):
    def run(num_steps):
      with torch.no_grad(), torch_precision(device, dtype):
        ref_sample(gen, tok, num_samples=batch, labels=labels.clone(), num_steps=num_steps,
                   mask_token=gen.mask_token, patch_size=16, codebook_size=vq.codebook_size,
                   codebook_splits=mlm.codebook_splits, **settings)
      torch_sync(device)

    return run

  return {d: runner(d) for d in dtypes}, torch.__version__


def record_reference(record: dict, seconds: dict, batch: int, torch_version: str, device: str, threads,
                     label: str = "") -> None:
  """Adds the reference's timings and the ratios at equal precision to ``record`` (and prints them).

  ``record["reference"]`` holds the float32 figure (the layout of every earlier record);
  other precisions go to ``record["reference_<dtype>"]``.
  """
  for d, t in seconds.items():
    key = "reference" if d == "float32" else f"reference_{d}"
    record[key] = dict(seconds=t, images_per_s=batch / t, torch=torch_version, torch_device=device, threads=threads)
    ratio = record["jax"][d]["images_per_s"] / (batch / t)
    record[f"ratio_ours_over_reference_{d}"] = ratio
    print(f"{label}batch {batch:3d} reference {d:9s} {batch / t:9.4f} img/s  ratio {ratio:.2f}x ({device})", flush=True)


def time_interleaved(runners: dict, step_counts, repeats: int) -> dict:
  """Minimum wall time per (system, steps), with the systems' runs interleaved.

  Interleaving puts both systems under the same background load, which on a
  shared machine moves single timings by ~10 %.
  """
  import time

  for run in runners.values():  # warm-up / compile
    for s in step_counts:
      run(s)
  best = {(name, s): float("inf") for name in runners for s in step_counts}
  for _ in range(repeats):
    for s in step_counts:
      for name, run in runners.items():
        start = time.perf_counter()
        run(s)
        best[name, s] = min(best[name, s], time.perf_counter() - start)
  return best


def seconds_for(best: dict, name: str, steps: int, measure_steps: int | None) -> float:
  if measure_steps is None:
    return best[name, steps]
  return _extrapolate(best[name, 1], best[name, measure_steps], measure_steps, steps)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(REPO, "configs/maskbit_generator_12bit.py"))
  p.add_argument("--batches", default="1,8,32")
  p.add_argument("--num_steps", type=int, default=64)
  p.add_argument("--measure-steps", type=int, default=None, help="time this many steps and extrapolate")
  p.add_argument("--dtypes", default=None, help="default float32 on CPU, float32,bfloat16 elsewhere")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--reference-dir")
  p.add_argument("--torch-device", default=None, help="the reference's device (default: cuda when torch sees a GPU)")
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args()
  if args.measure_steps is not None and args.measure_steps < 2:
    p.error("--measure-steps must be >= 2")

  import jax

  import maskbit_jax

  dtypes = args.dtypes.split(",") if args.dtypes else (
      ["float32"] if jax.default_backend() == "cpu" else ["float32", "bfloat16"])
  gen_cfg = maskbit_jax.load_config(args.config)
  settings = {k: v for k, v in maskbit_jax.generator.sampling_defaults(gen_cfg).items() if k != "num_steps"}
  settings.setdefault("mask_schedule_strategy", "arccos")  # the reference's sample() needs it named
  step_counts = [args.num_steps] if args.measure_steps is None else [1, args.measure_steps]
  for batch in [int(b) for b in args.batches.split(",")]:
    record = dict(benchmark="sampling", config=os.path.basename(args.config), batch=batch, num_steps=args.num_steps,
                  measure_steps=args.measure_steps, settings=settings, timing="min over interleaved repeats",
                  repeats=args.repeats, machine=machine(), jax={})
    runners = {f"jax_{d}": jax_runner(args.config, batch, d) for d in dtypes}
    if args.reference_dir:
      device = torch_device(args.torch_device)
      ref_dtypes = reference_dtypes(dtypes, device)
      ref_runs, torch_version = reference_runners(args.reference_dir, batch, settings, device, ref_dtypes)
      runners.update({f"reference_{d}": run for d, run in ref_runs.items()})
    best = time_interleaved(runners, step_counts, args.repeats)
    for d in dtypes:
      t = seconds_for(best, f"jax_{d}", args.num_steps, args.measure_steps)
      record["jax"][d] = dict(seconds=t, images_per_s=batch / t, extrapolated=args.measure_steps is not None)
      print(f"batch {batch:3d} jax {d:9s} {batch / t:9.4f} img/s ({t:.2f} s"
            f"{', extrapolated' if args.measure_steps else ''})")
    record["jax"].update(peak_memory_bytes())
    if args.reference_dir:
      record_reference(record, {d: seconds_for(best, f"reference_{d}", args.num_steps, args.measure_steps)
                                for d in ref_dtypes}, batch, torch_version, device, os.cpu_count())
    if not args.no_save:
      append_result("sampling", record)


if __name__ == "__main__":
  main()
