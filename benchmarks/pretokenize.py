"""Pretokenize throughput (images/s) on the tiny tokenizer: the code before the grain input, and now.

  python benchmarks/pretokenize.py                      # 512 JPEGs, 32 px, batch 16
  python benchmarks/pretokenize.py --images 256 --old-commit f938e74

The input is a folder of JPEGs at 320x240 written once (decode, resize of the shorter side and centre
crop are the work a real set's input does), tokenized by ``configs/tokenizer_tiny.py`` with random
weights. ``old`` is ``maskbit_jax/pretokenize.py`` of ``--old-commit`` (one image at a time on the main
thread, a blocking transfer per batch), loaded from ``git show`` into a temporary file; ``new`` is this
checkout's. Each version runs on the first 1/8 of the images and on all of them (interleaved, best of
``--repeats``); the images/s are the difference in images over the difference in wall time, so start-up,
tokenizer init and compile drop out. The records of the two full sets are checked byte-equal. Appends to benchmarks/results/pretokenize.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.common import append_result, machine  # noqa: E402


def write_jpegs(folder: str, num: int) -> None:
  from PIL import Image

  rng = np.random.default_rng(0)
  for c in range(2):
    os.makedirs(os.path.join(folder, f"class{c}"), exist_ok=True)
  for i in range(num):
    smooth = rng.uniform(0, 255, (30, 40, 3)).astype(np.uint8)  # upsampled noise: JPEG-like content
    Image.fromarray(smooth).resize((320, 240), Image.BILINEAR).save(
        os.path.join(folder, f"class{i % 2}", f"{i:05d}.jpg"), quality=90)


def load_old(commit: str):
  text = subprocess.run(["git", "show", f"{commit}:maskbit_jax/pretokenize.py"], cwd=REPO, check=True,
                        capture_output=True, text=True).stdout
  path = os.path.join(tempfile.mkdtemp(), "old_pretokenize.py")
  with open(path, "w") as f:
    f.write(text)
  spec = importlib.util.spec_from_file_location("old_pretokenize", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def records(folder: str) -> list[bytes]:
  import glob

  from array_record.python.array_record_data_source import ArrayRecordDataSource

  files = sorted(glob.glob(os.path.join(folder, "tokens-*-of-*.array_record")))
  source = ArrayRecordDataSource(files)
  return [source[i] for i in range(len(source))]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--threads", type=int, default=8)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--old-commit", default="f938e74", help="the commit before pretokenize's grain input")
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args()

  import maskbit_jax.cli.pretokenize as new
  from maskbit_jax.data.token_dataset import TokenDataset

  old = load_old(args.old_commit)
  work = tempfile.mkdtemp(prefix="bench_pretokenize-")
  data = os.path.join(work, "jpegs")
  write_jpegs(data, args.images)
  common = ["--config", os.path.join(REPO, "configs/tokenizer_tiny.py"), "--random_init", "--data", data,
            "--size", str(args.size), "--batch_size", str(args.batch)]
  # wall time of runs of n1 and of n2 images: (n2 - n1) / (t2 - t1) is the rate without the fixed costs
  # (start-up, tokenizer init, compile), which both versions pay alike
  n1, n2 = args.images // 8, args.images
  times = {(name, n): [] for name in ("old", "new") for n in (n1, n2)}
  for r in range(args.repeats):
    for n in (n1, n2):
      for name, module, extra in (("old", old, []), ("new", new, ["--num_threads", str(args.threads)])):
        out = os.path.join(work, f"{name}{n}_{r}")
        start = time.perf_counter()
        assert module.main([*common, *extra, "--num_images", str(n), "--out", out]) == 0
        times[name, n].append(time.perf_counter() - start)
  same = records(os.path.join(work, f"old{n2}_0")) == records(os.path.join(work, f"new{n2}_0"))
  if not same:
    raise AssertionError("the old and the new set differ")
  best = {k: min(v) for k, v in times.items()}
  rate = {name: (n2 - n1) / (best[name, n2] - best[name, n1]) for name in ("old", "new")}
  record = dict(benchmark="pretokenize", tokenizer="tokenizer_tiny (random weights)", images=[n1, n2],
                size=args.size, batch=args.batch, threads=args.threads, source="320x240 JPEG folder",
                old_commit=args.old_commit, seconds={f"{k[0]}_{k[1]}": v for k, v in best.items()},
                old_images_per_s=rate["old"], new_images_per_s=rate["new"], speedup=rate["new"] / rate["old"],
                grid=TokenDataset(os.path.join(work, f"new{n2}_0")).meta["token_grid"],
                records_byte_equal=same, load_average=os.getloadavg(), machine=machine())
  print({k: v for k, v in record.items() if k != "machine"})
  if not args.no_save:
    print("appended to", append_result("pretokenize", record))


if __name__ == "__main__":
  main()
