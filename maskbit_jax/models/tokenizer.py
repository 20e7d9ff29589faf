"""Tokenizer models: encoder -> quantizer -> decoder, built from a ``model.vq_model`` config.

``model_class``:
  * ``vqgan+``  VQGAN+ (MaskBit), LFQ (``lookup-free``) or learned VQ (``lookup``).
  * ``maskgit`` the legacy MaskGIT tokenizer: same encoder, legacy decoder naming.
  * ``taming``  the original Taming VQGAN; its architecture is fixed.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import layers
from maskbit_jax.models.lfq_quantizer import LookupFreeQuantizer
# The config reading (validation, derived sizes) lives with the typed config; imported here for its users.
from maskbit_jax.models.model_config import (MODEL_CLASSES, QUANTIZER_TYPES, TokenizerConfig,  # noqa: F401
                                             codebook_size_of, latent_stride_of, validate_vq_config)
from maskbit_jax.models.taming_vqgan import TamingDecoder, TamingEncoder
from maskbit_jax.models.vq_quantizer import VectorQuantizer
from maskbit_jax.models.vqgan_decoder import ConvDecoder
from maskbit_jax.models.vqgan_encoder import ConvEncoder

# Parameter shapes do not depend on the image size; init traces a small image.
INIT_IMAGE_SIZE = 64


class ConvVQModel(nn.Module):
  """The VQGAN+ / MaskGIT tokenizer. Images are NHWC, roughly in [0, 1]."""

  hidden_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  token_size: int
  quantize: nn.Module
  num_channels: int = 3
  sample_with_conv: bool = True
  legacy_decoder: bool = False
  num_res_blocks_decoder: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    self.encoder = ConvEncoder(self.hidden_channels, tuple(self.channel_mult), self.num_res_blocks,
                               self.token_size, self.sample_with_conv, **kw)
    dec_blocks = self.num_res_blocks if self.num_res_blocks_decoder is None else self.num_res_blocks_decoder
    self.decoder = ConvDecoder(self.hidden_channels, tuple(self.channel_mult), dec_blocks,
                               self.num_channels, self.legacy_decoder, **kw)

  def encode_latents(self, images_bhwc: jax.Array) -> jax.Array:
    """Encoder output before quantization, ``[B, h, w, token_size]`` float32."""
    return self.encoder(images_bhwc).astype(jnp.float32)

  def encode(self, images_bhwc: jax.Array, train: bool = False):
    return self.quantize(self.encode_latents(images_bhwc), train=train)

  def decode(self, z_q_bhwc: jax.Array) -> jax.Array:
    return self.decoder(z_q_bhwc).astype(jnp.float32)

  def decode_tokens(self, tokens_bhw: jax.Array) -> jax.Array:
    return self.decode(self.quantize.get_codebook_entry(tokens_bhw))

  def __call__(self, images_bhwc: jax.Array, train: bool = False):
    z_q, result = self.encode(images_bhwc, train=train)
    return self.decode(z_q), result


class TamingVQModel(nn.Module):
  """The original Taming VQGAN; maps [0, 1] images to [-1, 1] and back itself."""

  codebook_size: int = 1024
  token_size: int = 256
  commitment_cost: float = 0.25
  precision: Any = None
  dtype: Any = jnp.float32  # accepted for a uniform interface; the Taming net runs in float32

  def setup(self):
    p = self.precision
    self.encoder = TamingEncoder(z_channels=256, precision=p)
    self.decoder = TamingDecoder(precision=p)
    self.quantize = VectorQuantizer(self.codebook_size, self.token_size, self.commitment_cost)
    self.quant_conv = layers.conv(self.token_size, 1, padding="VALID", precision=p)
    self.post_quant_conv = layers.conv(256, 1, padding="VALID", precision=p)

  def encode_latents(self, images_bhwc: jax.Array) -> jax.Array:
    return self.quant_conv(self.encoder(images_bhwc * 2.0 - 1.0))

  def encode(self, images_bhwc: jax.Array, train: bool = False):
    return self.quantize(self.encode_latents(images_bhwc), train=train)

  def decode(self, z_q_bhwc: jax.Array) -> jax.Array:
    return (self.decoder(self.post_quant_conv(z_q_bhwc)) + 1.0) / 2.0

  def decode_tokens(self, tokens_bhw: jax.Array) -> jax.Array:
    return self.decode(self.quantize.get_codebook_entry(tokens_bhw))

  def __call__(self, images_bhwc: jax.Array, train: bool = False):
    z_q, result = self.encode(images_bhwc, train=train)
    return self.decode(z_q), result


def build_tokenizer_module(config: TokenizerConfig | Mapping[str, Any], *, dtype: Any = jnp.float32,
                           param_dtype: Any = jnp.float32, precision: Any = None) -> nn.Module:
  """The flax module for its typed config (``TokenizerConfig.from_config(cfg)``) or a ``model.vq_model``
  section (reference key names)."""
  c = config if isinstance(config, TokenizerConfig) else TokenizerConfig.from_vq_model(config)
  if c.model_class == "taming":
    return TamingVQModel(codebook_size=c.codebook_size, token_size=c.token_size, precision=precision)
  common = dict(commitment_cost=c.commitment_cost, entropy_loss_weight=c.entropy_loss_weight,
                entropy_loss_temperature=c.entropy_loss_temperature, entropy_gamma=c.entropy_gamma)
  if c.quantizer_type == "lookup-free":
    quantizer = LookupFreeQuantizer(c.token_size, **common)
  else:
    quantizer = VectorQuantizer(c.codebook_size, c.token_size, use_l2_normalisation=c.use_l2_normalisation,
                                param_dtype=param_dtype, **common)
  return ConvVQModel(
      hidden_channels=c.hidden_channels,
      channel_mult=c.channel_mult,
      num_res_blocks=c.num_res_blocks,
      token_size=c.token_size,
      quantize=quantizer,
      num_channels=c.num_channels,
      sample_with_conv=c.sample_with_conv,
      legacy_decoder=c.model_class == "maskgit",
      num_res_blocks_decoder=c.num_res_blocks_decoder,
      dtype=dtype, param_dtype=param_dtype, precision=precision,
  )


def with_entropy_groups(module: nn.Module, groups: int) -> nn.Module:
  """The tokenizer with its quantizer's entropy terms averaged over ``groups`` slices of the batch."""
  if groups == 1:
    return module
  if not isinstance(module, ConvVQModel):
    raise ValueError(f"per-group entropy needs a VQGAN+ / MaskGIT tokenizer, not {type(module).__name__}")
  return module.clone(quantize=module.quantize.clone(entropy_groups=groups))


def abstract_tokenizer_params(module: nn.Module, image_size: int = INIT_IMAGE_SIZE):
  """ShapeDtypeStructs of the params (boxed with logical axis names); allocates nothing."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)["params"]


def init_tokenizer_params(module: nn.Module, rng: jax.Array, image_size: int = INIT_IMAGE_SIZE):
  return nn.meta.unbox(layers.init_params(module, rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32)))
