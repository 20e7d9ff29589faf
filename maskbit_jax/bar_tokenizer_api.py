"""BAR's binary-FSQ tokenizer: ``load_bar_tokenizer`` and ``BarFsqTokenizer``.

    tok = load_bar_tokenizer("bar_fsq_16bits_ft")                     # decoder only (what sampling needs)
    tok = load_bar_tokenizer("configs/bar_b.py", with_encoder=True)   # + the SigLIP2 encoder (editing, pretokenizing)
    tokens = tok.encode(images)          # float32 [B, H, W, 3] in [0, 1] -> int32 [B, h, w]
    images = tok.bits_to_images(bits)    # bits [B, cells*K] -> float32 [B, H, W, 3] in [0, 1]

``load_bar_tokenizer`` takes any config whose bits it should decode: a BAR-FSQ tokenizer config, or a BAR
generator config, whose tokenizer is BAR-FSQ or (BAR on MaskBit bits) a MaskBit lookup-free tokenizer; the
registry says which (``registry.tokenizer_family_of``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from maskbit_jax import checkpointing, hub, runtime
from maskbit_jax.config import ConfigLike, load_config
from maskbit_jax.convert import bar_tokenizer_mapping as btm
from maskbit_jax.image_io import to_uint8
from maskbit_jax.models.bar_fsq import pack_bits, unpack_bits
from maskbit_jax.models.bar_tokenizer import (abstract_bar_tokenizer_params, bar_tokenizer_from_config,
                                              init_bar_tokenizer_params)
from maskbit_jax.registry import tokenizer_family_of
from maskbit_jax.tokenizer import validate_images

LFQ, BAR_FSQ = "lfq", "bar_fsq"


@dataclasses.dataclass(frozen=True, eq=False)
class BarFsqTokenizer:
  """BAR's binary-FSQ tokenizer with its parameters (decode-only unless built with the encoder)."""

  family: ClassVar[str] = "bar_fsq_tokenizer"
  config: ml_collections.ConfigDict
  module: nn.Module
  params: Any

  @property
  def token_bits(self) -> int:
    return self.module.token_size

  @property
  def grid(self) -> tuple[int, int]:
    return self.module.grid_size, self.module.grid_size

  @property
  def image_size(self) -> int:
    """The one image side it encodes and decodes (its decoder makes one fixed token grid)."""
    return self.module.image_size

  @property
  def latent_stride(self) -> int:
    return self.module.image_size // self.module.grid_size

  def token_grid(self, image_size: int | None = None) -> tuple[int, int]:
    """The token grid ``(h, w)``: fixed, whatever ``image_size``."""
    del image_size
    return self.grid

  @functools.cached_property
  def _decode_fn(self):
    return jax.jit(lambda p, b: self.module.apply({"params": p}, b, method="decode_bits"))

  @functools.cached_property
  def _encode_fn(self):
    # BAR's SigLIP2 encoder takes images in [-1, 1]
    return jax.jit(lambda p, x: self.module.apply({"params": p}, x * 2.0 - 1.0, method="encode_bits"))

  def decode_bits(self, bits) -> jax.Array:
    """Bits ``[B, cells*K]`` or ``[B, cells, K]`` -> images ``[B, H, W, 3]`` in the decoder's [-1, 1] (not clamped)."""
    return self._decode_fn(self.params, jnp.asarray(bits, jnp.int32))

  def bits_to_images(self, bits) -> jax.Array:
    """Bits ``[B, h, w, K]`` (or ``[B, cells*K]``), {0, 1} -> float32 images ``[B, H, W, 3]`` in [0, 1] (not clamped)."""
    bits = jnp.asarray(bits, jnp.int32)
    return (self.decode_bits(bits.reshape(bits.shape[0], -1)).astype(jnp.float32) + 1.0) / 2.0

  def decode_tokens(self, tokens) -> jax.Array:
    """int tokens ``[B, h, w]`` -> float32 images ``[B, H, W, 3]`` in [0, 1] (not clamped)."""
    return self.bits_to_images(unpack_bits(jnp.asarray(tokens, jnp.int32), self.token_bits))

  def encode_bits(self, images) -> jax.Array:
    """float32 NHWC images in [0, 1] at ``image_size`` -> int32 bits ``[B, h, w, K]`` (bit j has weight 2^j)."""
    if not self.module.with_encoder:
      raise ValueError("encoding needs the encoder: load the BAR tokenizer with load_bar_tokenizer(..., "
                       "with_encoder=True)")
    images = validate_images(images)
    bits = self._encode_fn(self.params, images)
    return jnp.asarray(bits, jnp.int32).reshape((images.shape[0],) + tuple(self.grid) + (self.token_bits,))

  def encode(self, images) -> jax.Array:
    """float32 NHWC images in [0, 1] -> int32 tokens ``[B, h, w]``."""
    return pack_bits(self.encode_bits(images))


def load_bar_fsq_tokenizer(config: ConfigLike, checkpoint: str | os.PathLike | None = None, *,
                           random_init: bool = False, seed: int = 0, dtype: str | None = None,
                           precision: str | None = None, with_encoder: bool = False, overrides=(),
                           registry=None) -> BarFsqTokenizer:
  """The BAR-FSQ tokenizer of a config (BAR-FSQ tokenizer or BAR generator; the registry's loader of the
  ``bar_fsq_tokenizer`` family); ``checkpoint`` default ``experiment.tokenizer_checkpoint``. Built decode-only
  (decoder + ``out_proj``) unless ``with_encoder``."""
  config, checkpoint = hub.resolve_model(config, checkpoint, "bar_tokenizer", random_init=random_init,
                                         registry_override=registry)
  cfg = load_config(config, overrides)
  compute_dtype, prec = runtime.resolve(cfg, dtype, precision)
  module = bar_tokenizer_from_config(cfg, with_encoder=with_encoder, dtype=compute_dtype, precision=prec)
  if checkpoint is None and not random_init:
    checkpoint = (cfg.get("experiment", None) or {}).get("tokenizer_checkpoint") or None
    checkpoint = hub.resolve_checkpoint(checkpoint, "bar_tokenizer", registry)  # the config may name a release
  if checkpoint is None and not random_init:
    raise ValueError("no BAR tokenizer checkpoint given (argument or experiment.tokenizer_checkpoint); "
                     "pass random_init=True (on the command line: --random_init) for untrained weights")
  if random_init:
    params = nn.meta.unbox(init_bar_tokenizer_params(module, jax.random.key(seed)))
  else:
    abstract = nn.meta.unbox(abstract_bar_tokenizer_params(module))
    params = checkpointing.load_weights(
        checkpoint, abstract, kind="bar_tokenizer", mapping=btm.bar_tokenizer_param_mapping,
        # a decode-only tokenizer takes the decoder side of a whole tokenizer's file
        from_state_dict=lambda state, source: btm.bar_tokenizer_state_to_flax(
            state, abstract, source=source, skip_unbuilt_parts=not with_encoder))
  return BarFsqTokenizer(cfg, module, params)


def load_bar_tokenizer(config: ConfigLike, checkpoint: str | os.PathLike | None = None, *,
                       random_init: bool = False, seed: int = 0, dtype: str | None = None,
                       precision: str | None = None, with_encoder: bool = False, overrides=(), registry=None):
  """The tokenizer a BAR config's bits decode with: a MaskBit ``Tokenizer`` (LFQ) or a ``BarFsqTokenizer``.

  ``config``/``checkpoint`` may be released names: ``load_bar_tokenizer("bar_fsq_16bits_ft")``, or a BAR
  generator's name (``"bar_b"``) for the tokenizer it was released with.
  ``checkpoint`` default: ``experiment.vqgan_checkpoint`` (LFQ) or
  ``experiment.tokenizer_checkpoint`` (BAR-FSQ). A BAR-FSQ tokenizer is built
  decode-only (decoder + ``out_proj``) unless ``with_encoder``.
  """
  config, checkpoint = hub.resolve_model(config, checkpoint, "bar_tokenizer", random_init=random_init,
                                         registry_override=registry)
  cfg = load_config(config, overrides)
  fam = tokenizer_family_of(cfg)
  options = dict(random_init=random_init, seed=seed, dtype=dtype, precision=precision)
  if fam.name == BarFsqTokenizer.family:  # this module's own loader, with its encoder option
    return load_bar_fsq_tokenizer(cfg, checkpoint, with_encoder=with_encoder, registry=registry, **options)
  return fam.get("loader")(cfg, checkpoint, **options)


def tokenizer_grid(tok, resolution: int | None = None) -> tuple[int, int]:
  """The latent grid ``(h, w)`` of ``tok``; a MaskBit tokenizer's depends on the image ``resolution``."""
  if tok.image_size is None and (not resolution or int(resolution) <= 0):
    raise ValueError("a BAR config on a MaskBit tokenizer needs dataset.preprocessing.resolution (image size)")
  return tuple(tok.token_grid(resolution))


def images_to_uint8(images_01) -> np.ndarray:
  """[0, 1] images -> uint8 as the reference sampling script writes them: ``clamp(0, 1) * 255``, truncated."""
  return np.asarray(to_uint8(np.asarray(images_01, np.float32)))


__all__ = ["BAR_FSQ", "LFQ", "BarFsqTokenizer", "images_to_uint8", "load_bar_fsq_tokenizer", "load_bar_tokenizer",
           "tokenizer_grid"]
