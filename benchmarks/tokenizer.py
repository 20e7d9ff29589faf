"""Tokenizer encode/decode throughput and peak memory, optionally beside the PyTorch reference.

  python benchmarks/tokenizer.py                                   # full-size 12-bit, 256^2, batch 4
  python benchmarks/tokenizer.py --reference-dir /path/to/maskbit  # + the reference on the same inputs
  python benchmarks/tokenizer.py --dtypes float32,bfloat16         # accelerators: both precisions

Weights are random (speed does not depend on them) unless --checkpoint is given.
Figures are appended to benchmarks/results/tokenizer.jsonl with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (append_result, machine, peak_memory_bytes, reference_dtypes, time_call,  # noqa: E402
                               torch_device, torch_precision, torch_sync)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_jax(config: str, checkpoint: str | None, images: np.ndarray, dtype: str, repeats: int) -> dict:
  import jax

  import maskbit_jax

  tok = maskbit_jax.load_tokenizer(config, checkpoint, random_init=checkpoint is None, dtype=dtype)
  x = jax.device_put(images)
  tokens = tok.encode(x, validate=False)
  encode = time_call(lambda: tok.encode(x, validate=False).block_until_ready(), repeats=repeats)
  decode = time_call(lambda: tok.decode_tokens(tokens).block_until_ready(), repeats=repeats)
  return dict(encode=encode, decode=decode, **peak_memory_bytes())


def _stub_torchvision_if_missing() -> None:
  """The reference imports torchvision for its losses only; encode/decode never touch it.

  Where torchvision cannot be imported beside the installed torch, an empty
  stand-in lets the reference's modeling package import.
  """
  try:
    import torchvision  # noqa: F401
  except Exception:  # not installed, or a binary mismatch with torch
    from unittest import mock

    for name in ("torchvision", "torchvision.models", "torchvision.models.feature_extraction",
                 "torchvision.transforms", "torchvision.transforms.functional"):
      sys.modules[name] = mock.MagicMock(name=name)


def bench_reference(reference_dir: str, config_yaml: str, images: np.ndarray, threads: int, repeats: int,
                    device: str = "cpu", dtype: str = "float32") -> dict:
  import torch
  from omegaconf import OmegaConf

  sys.path.insert(0, reference_dir)
  _stub_torchvision_if_missing()
  from modeling.conv_vqgan import ConvVQModel  # the reference, read from the user's checkout

  torch.set_num_threads(threads)
  cfg = OmegaConf.load(config_yaml).model.vq_model
  if cfg.quantizer_type == "lookup-free":
    cfg.codebook_size = 2**cfg.token_size
  model = ConvVQModel(cfg).eval().to(device)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)

  def timed(fn):
    def call():
      fn()
      torch_sync(device)

    return time_call(call, repeats=repeats)

  with torch.no_grad(), torch_precision(device, dtype):
    _, result = model.encode(x)
    tokens = result["min_encoding_indices"].reshape(x.shape[0], -1)
    encode = timed(lambda: model.encode(x))
    decode = timed(lambda: model.decode_tokens(tokens))
  return dict(encode=encode, decode=decode, torch=torch.__version__, threads=threads, torch_device=device)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(REPO, "configs/maskbit_tokenizer_12bit.py"))
  p.add_argument("--checkpoint")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--dtypes", default=None, help="comma list; default float32 on CPU, float32,bfloat16 elsewhere")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--reference-dir", help="checkout of github markweberdev/maskbit (needs torch)")
  p.add_argument("--reference-config", default="configs/tokenizer/maskbit_tokenizer_12bit.yaml",
                 help="reference yaml, relative to --reference-dir")
  p.add_argument("--torch-device", default=None, help="the reference's device (default: cuda when torch sees a GPU)")
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args()

  import jax

  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
  dtypes = args.dtypes.split(",") if args.dtypes else (
      ["float32"] if jax.default_backend() == "cpu" else ["float32", "bfloat16"])
  info = machine()
  record = dict(benchmark="tokenizer", config=os.path.basename(args.config), batch=args.batch, size=args.size,
                machine=info, jax={})
  for dtype in dtypes:
    r = bench_jax(args.config, args.checkpoint, images, dtype, args.repeats)
    r["encode_img_s"] = args.batch / r["encode"]["median_s"]
    r["decode_img_s"] = args.batch / r["decode"]["median_s"]
    record["jax"][dtype] = r
    print(f"jax {dtype:9s} encode {r['encode_img_s']:8.2f} img/s   decode {r['decode_img_s']:8.2f} img/s   "
          f"peak {json.dumps({k: v for k, v in r.items() if k.endswith('bytes')})}")
  if args.reference_dir:
    device = torch_device(args.torch_device)
    for dtype in reference_dtypes(dtypes, device):
      ref = bench_reference(args.reference_dir, os.path.join(args.reference_dir, args.reference_config), images,
                            threads=os.cpu_count() or 1, repeats=args.repeats, device=device, dtype=dtype)
      ref["encode_img_s"] = args.batch / ref["encode"]["median_s"]
      ref["decode_img_s"] = args.batch / ref["decode"]["median_s"]
      suffix = "" if dtype == "float32" else f"_{dtype}"  # float32 keeps the keys of earlier records
      record["reference" + suffix] = ref
      ours = record["jax"][dtype]
      ratio = dict(encode=ours["encode_img_s"] / ref["encode_img_s"], decode=ours["decode_img_s"] / ref["decode_img_s"])
      record["ratio_ours_over_reference" + suffix] = ratio
      print(f"reference {dtype:9s} encode {ref['encode_img_s']:8.2f} img/s   decode {ref['decode_img_s']:8.2f} img/s   "
            f"(torch {ref['torch']} on {device}, {ref['threads']} threads)")
      print(f"ratio ours/reference ({dtype}):", json.dumps(ratio))
  if not args.no_save:
    print("appended to", append_result("tokenizer", record))


if __name__ == "__main__":
  main()
