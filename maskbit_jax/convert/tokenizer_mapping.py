"""Name maps for tokenizer checkpoints (VQGAN+, MaskGIT, Taming)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from maskbit_jax.convert.param_mapping import TAMING_RULES, VQGAN_RULES, Buffer, ParamMapping


def lfq_buffers(token_bits: int) -> dict[str, Buffer]:
  """The LFQ buffers the released files carry: ``bits_to_indices`` (2^k) and ``codebook`` (+-1 rows)."""

  def bits_to_indices():
    return (2 ** np.arange(token_bits, dtype=np.int64)).astype(np.int32)

  def codebook():
    codes = np.arange(2**token_bits, dtype=np.int64)[:, None]
    bits = (codes >> np.arange(token_bits)) & 1
    return (bits * 2.0 - 1.0).astype(np.float32)

  return {"quantize.bits_to_indices": Buffer(bits_to_indices), "quantize.codebook": Buffer(codebook)}


def tokenizer_param_mapping(vq_cfg: Mapping[str, Any]) -> ParamMapping:
  if vq_cfg["model_class"] == "taming":
    return ParamMapping(TAMING_RULES)
  buffers = lfq_buffers(int(vq_cfg["token_size"])) if vq_cfg["quantizer_type"] == "lookup-free" else {}
  return ParamMapping(VQGAN_RULES, buffers=buffers)
