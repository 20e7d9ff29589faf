"""The BAR API in one namespace: ``load_bar_generator``, ``load_bar_tokenizer``, ``sample`` (also reached
through ``maskbit_jax.sample``).

    gen = load_bar_generator("configs/bar_b.py", "bar_b.bin")
    tok = load_bar_tokenizer("configs/bar_b.py", "bar_fsq_16bits_ft.bin")      # decoder only
    out = maskbit_jax.sample(gen, tok, [207, 360], jax.random.key(0))          # bits, tokens, images in [0, 1]

Each concept lives in its own module: the generator (``bar_generator_api``: loader, pair check, settings,
sampler), the tokenizer its bits decode with (``bar_tokenizer_api``: BAR-FSQ or, for BAR on MaskBit bits, a
MaskBit LFQ tokenizer) and the config builders (``bar_config``). Which tokenizer a config's bits belong to is
its family's (``registry.tokenizer_family_of``), from ``model.vq_model.quantizer_type``.
"""

from __future__ import annotations

import ml_collections

from maskbit_jax import registry
from maskbit_jax.bar_config import SAMPLING_KEYS, bar_on_maskbit_config
from maskbit_jax.bar_generator_api import (BarModel, bits_to_tokens, check_pair, decode_bits, load_bar_generator,
                                           resolve_settings, sample)
from maskbit_jax.bar_tokenizer_api import (BAR_FSQ, LFQ, BarFsqTokenizer, images_to_uint8, load_bar_tokenizer,
                                           tokenizer_grid)


def is_bar_config(cfg: ml_collections.ConfigDict) -> bool:
  """True for a BAR generator config (``model.name`` ``bar_generator``)."""
  return registry.family_of(cfg).name == BarModel.family


def tokenizer_kind(cfg: ml_collections.ConfigDict) -> str:
  """``lfq`` (MaskBit lookup-free tokenizer) or ``bar_fsq`` (BAR's tokenizer): the bits of the config's tokenizer."""
  return registry.tokenizer_family_of(cfg).bits


__all__ = ["BAR_FSQ", "LFQ", "SAMPLING_KEYS", "BarFsqTokenizer", "BarModel", "bar_on_maskbit_config",
           "bits_to_tokens", "check_pair", "decode_bits", "images_to_uint8", "is_bar_config", "load_bar_generator",
           "load_bar_tokenizer", "resolve_settings", "sample", "tokenizer_grid", "tokenizer_kind"]
