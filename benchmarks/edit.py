"""Editing throughput beside sampling: ``edit`` (half the tokens kept), ``vary`` (half the bits kept) and ``sample``
at the same steps, batch and settings, interleaved; images/s (encode + generate + decode; ``sample`` has no encode).

  python benchmarks/edit.py                                        # 12-bit MaskBit release, 64 steps, batches 1,8
  python benchmarks/edit.py --config configs/generator_tiny.py --batches 8 --num_steps 8
  python benchmarks/edit.py --config configs/bar_tiny.py --batches 8  # BAR: its AR steps, a kept raster prefix

Weights are random (speed does not depend on them); each figure is the minimum over ``--repeats`` runs with
the three calls' runs interleaved (one machine load for all). Appends to ``results/edit.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import append_result, machine, peak_memory_bytes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _models(config: str, dtype: str):
  import maskbit_jax
  from maskbit_jax import registry

  cfg = maskbit_jax.load_config(config)
  tok_family = registry.tokenizer_family_of(cfg)
  encoder = dict(with_encoder=True) if tok_family.bits == "bar_fsq" else {}  # editing encodes the images
  return (registry.family_of(cfg).get("loader")(cfg, random_init=True, dtype=dtype),
          tok_family.get("loader")(cfg, random_init=True, dtype=dtype, **encoder))


def runners(config: str, batch: int, dtype: str, settings: dict) -> dict:
  """``{name: run()}``: one blocking call each of ``sample``, ``edit`` (top half of the token rows kept, a
  raster prefix) and ``vary`` (the high half of every token's bits kept) at ``batch``."""
  import jax

  import maskbit_jax
  from maskbit_jax.sampling.editing import check_models, image_hw

  gen, tok = _models(config, dtype)
  grid = check_models(gen, tok, jax.random.key(0))
  side = image_hw(tok, grid)[0]
  images = np.random.default_rng(0).random((batch, side, side, 3)).astype(np.float32)
  labels = np.arange(batch) % gen.num_classes
  keep = np.zeros(grid, bool)
  keep[: grid[0] // 2] = True
  key = jax.random.key(0)
  return dict(
      sample=lambda: jax.block_until_ready(maskbit_jax.sample(gen, tok, labels, key, **settings)["images"]),
      edit=lambda: jax.block_until_ready(maskbit_jax.edit(gen, tok, images, keep, labels, key, **settings)["images"]),
      vary=lambda: jax.block_until_ready(
          maskbit_jax.vary(gen, tok, images, gen.token_bits // 2, labels, key, **settings)["images"]))


def time_interleaved(runs: dict, repeats: int) -> dict:
  for run in runs.values():  # compile
    run()
  best = {name: float("inf") for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(REPO, "configs/maskbit_generator_12bit.py"))
  p.add_argument("--batches", default="1,8")
  p.add_argument("--num_steps", type=int, default=64, help="MaskBit: sampler steps (BAR: its AR steps, fixed)")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args()

  import maskbit_jax
  from maskbit_jax import registry

  # the step count is a setting of the families that have one (MaskBit); BAR samples one raster pass
  takes_steps = "num_steps" in registry.family_of(maskbit_jax.load_config(args.config)).sampling_keys
  settings = dict(num_steps=args.num_steps) if takes_steps else {}
  for batch in [int(b) for b in args.batches.split(",")]:
    best = time_interleaved(runners(args.config, batch, args.dtype, settings), args.repeats)
    record = dict(benchmark="edit", config=os.path.basename(args.config), batch=batch, dtype=args.dtype,
                  num_steps=args.num_steps if takes_steps else None, timing="min over interleaved repeats",
                  repeats=args.repeats, machine=machine(), memory=peak_memory_bytes())
    for name, t in best.items():
      record[name] = dict(seconds=t, images_per_s=batch / t)
      print(f"{os.path.basename(args.config)} batch {batch:3d} {name:6s} {batch / t:9.4f} img/s ({t:.3f} s)",
            flush=True)
    record["edit_over_sample"] = best["sample"] / best["edit"]
    record["vary_over_sample"] = best["sample"] / best["vary"]
    if not args.no_save:
      append_result("edit", record)


if __name__ == "__main__":
  main()
