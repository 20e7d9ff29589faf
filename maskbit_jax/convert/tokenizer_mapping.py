"""Name maps for tokenizer checkpoints (VQGAN+, MaskGIT, Taming)."""

from __future__ import annotations

from typing import Any, Mapping

from maskbit_jax.bits import bit_weights_np, codebook_np
from maskbit_jax.convert.param_mapping import TAMING_RULES, VQGAN_RULES, Buffer, ParamMapping


def lfq_buffers(token_bits: int) -> dict[str, Buffer]:
  """The LFQ buffers the released files carry: ``bits_to_indices`` (2^k) and ``codebook`` (+-1 rows)."""
  return {"quantize.bits_to_indices": Buffer(lambda: bit_weights_np(token_bits)),
          "quantize.codebook": Buffer(lambda: codebook_np(token_bits))}


def tokenizer_param_mapping(vq_cfg: Mapping[str, Any]) -> ParamMapping:
  if vq_cfg["model_class"] == "taming":
    return ParamMapping(TAMING_RULES)
  buffers = lfq_buffers(int(vq_cfg["token_size"])) if vq_cfg["quantizer_type"] == "lookup-free" else {}
  return ParamMapping(VQGAN_RULES, buffers=buffers)
