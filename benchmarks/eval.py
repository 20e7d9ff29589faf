"""Inception feature throughput and FID-statistics time, extrapolated to 50,000 images.

  python benchmarks/eval.py                 # batch 32 on accelerators, 8 on CPU
  python benchmarks/eval.py --batch 64 --measure-images 1024

Random Inception weights (speed does not depend on them); 256x256 inputs,
resized to 299 inside the network as for FID. Appends to
benchmarks/results/eval.jsonl with the machine named.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import append_result, machine, peak_memory_bytes, time_call  # noqa: E402

FID_IMAGES = 50_000


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args()

  import jax
  import jax.numpy as jnp

  from maskbit_jax.evaluation.fid import FeatureStats, fid_from_stats
  from maskbit_jax.evaluation.inception import InceptionV3

  batch = args.batch or (8 if jax.default_backend() == "cpu" else 32)
  module = InceptionV3()
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, args.size, args.size, 3), np.uint8))
  variables = jax.jit(module.init)(jax.random.key(0), images[:1])
  fwd = jax.jit(lambda v, x: module.apply(v, x)["2048"])
  t = time_call(lambda: fwd(variables, images).block_until_ready(), repeats=args.repeats)["median_s"]
  img_s = batch / t

  feats = np.random.default_rng(1).normal(size=(batch, 2048)).astype(np.float32)
  stats = FeatureStats()
  t_update = time_call(lambda: stats.update(feats), repeats=args.repeats)["median_s"]
  a = FeatureStats().update(np.random.default_rng(2).normal(size=(4096, 2048)))
  b = FeatureStats().update(np.random.default_rng(3).normal(size=(4096, 2048)) * 1.1)
  start = time.perf_counter()
  fid_from_stats(a, b)
  t_fid = time.perf_counter() - start
  total = FID_IMAGES / img_s + FID_IMAGES / batch * t_update + t_fid
  record = dict(benchmark="eval", batch=batch, size=args.size, inception_images_per_s=img_s,
                stats_update_s_per_batch=t_update, frechet_distance_s=t_fid,
                fid_50k_extrapolated_s=total, machine=machine(), **peak_memory_bytes())
  print(f"Inception features: {img_s:.2f} img/s (batch {batch}, {args.size}px -> 299)")
  print(f"float64 statistics update: {t_update * 1e3:.1f} ms/batch; Frechet distance (sqrtm 2048): {t_fid:.1f} s")
  print(f"FID statistics for {FID_IMAGES:,} images (extrapolated): {total / 60:.1f} min")
  if not args.no_save:
    print("appended to", append_result("eval", record))


if __name__ == "__main__":
  main()
