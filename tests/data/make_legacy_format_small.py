"""Writes ``legacy_format_small.pt``: a tiny checkpoint in torch's legacy (non-zip) format.

Why a committed file: CI has no torch, yet the legacy reader in
``maskbit_jax.convert.torch_pickle`` must be tested on bytes torch really wrote.
Run once with torch installed (made with torch 2.13.0, CPU):

    python tests/data/make_legacy_format_small.py

Contents (an OrderedDict, in this order; ``tests/test_torch_pickle.py`` checks
these exact values):

* ``weight``   float32 (3, 4) = arange(12).reshape(3, 4)
* ``weight_t`` float32 (4, 3) = weight.T, a non-contiguous view of weight's storage
* ``tail``     float32 (6,)   = arange(6, 12), a view at storage offset 6
* ``half``     float16 (3,)   = [1.5, -2.0, 65504.0]
* ``bf16``     bfloat16 (3,)  = [1.0, -0.5, 3.0]
* ``ids``      int64 (2, 2)   = [[1, -2], [3, 2**40]]
* ``count``    int32 ()       = 7
* ``mask``     bool (3,)      = [True, False, True]
* ``pixels``   uint8 (3,)     = [0, 255, 7]
* ``double``   float64 (2,)   = [0.1, -1e300]
* ``u16``      uint16 (2,)    = [1, 65535]   (saved via _rebuild_tensor_v3 + UntypedStorage;
  torch 2.13's own legacy loader cannot read this entry back, ours can)
* ``param``    float32 (2,)   = [0.25, 0.5], an nn.Parameter
"""

from __future__ import annotations

import collections
import pathlib

import torch


def make_state() -> collections.OrderedDict:
  base = torch.arange(12, dtype=torch.float32)
  weight = base.view(3, 4)
  return collections.OrderedDict([
      ("weight", weight),
      ("weight_t", weight.t()),
      ("tail", base[6:]),
      ("half", torch.tensor([1.5, -2.0, 65504.0], dtype=torch.float16)),
      ("bf16", torch.tensor([1.0, -0.5, 3.0], dtype=torch.bfloat16)),
      ("ids", torch.tensor([[1, -2], [3, 2**40]], dtype=torch.int64)),
      ("count", torch.tensor(7, dtype=torch.int32)),
      ("mask", torch.tensor([True, False, True])),
      ("pixels", torch.tensor([0, 255, 7], dtype=torch.uint8)),
      ("double", torch.tensor([0.1, -1e300], dtype=torch.float64)),
      ("u16", torch.tensor([1, 65535], dtype=torch.int32).to(torch.uint16)),
      ("param", torch.nn.Parameter(torch.tensor([0.25, 0.5]))),
  ])


def main() -> None:
  out = pathlib.Path(__file__).with_name("legacy_format_small.pt")
  torch.save(make_state(), out, _use_new_zipfile_serialization=False)
  print(f"wrote {out} ({out.stat().st_size} bytes) with torch {torch.__version__}")


if __name__ == "__main__":
  main()
