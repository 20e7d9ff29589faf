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
from maskbit_jax.models.lfq_quantizer import MAX_TOKEN_BITS, LookupFreeQuantizer
from maskbit_jax.models.taming_vqgan import TamingDecoder, TamingEncoder
from maskbit_jax.models.vq_quantizer import VectorQuantizer
from maskbit_jax.models.vqgan_decoder import ConvDecoder
from maskbit_jax.models.vqgan_encoder import ConvEncoder

MODEL_CLASSES = ("vqgan+", "maskgit", "taming")
QUANTIZER_TYPES = ("lookup-free", "lookup")
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


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
  try:
    return cfg[key]
  except (KeyError, AttributeError):
    return default


def _require(cfg: Mapping[str, Any], key: str) -> Any:
  value = _get(cfg, key)
  if value is None:
    raise ValueError(f"model.vq_model.{key} is required but missing from the config")
  return value


def codebook_size_of(vq_cfg: Mapping[str, Any]) -> int:
  """The codebook size the model really uses (LFQ: 2^token_size, whatever the config says)."""
  if _get(vq_cfg, "quantizer_type") == "lookup-free":
    return 2 ** int(_require(vq_cfg, "token_size"))
  return int(_require(vq_cfg, "codebook_size"))


def latent_stride_of(vq_cfg: Mapping[str, Any]) -> int:
  if _get(vq_cfg, "model_class") == "taming":
    return 16
  return 2 ** (int(_require(vq_cfg, "num_resolutions")) - 1)


def validate_vq_config(vq_cfg: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first config value that cannot build a tokenizer."""
  model_class = _get(vq_cfg, "model_class")
  if model_class not in MODEL_CLASSES:
    raise ValueError(f"model.vq_model.model_class={model_class!r} is not supported; use one of {MODEL_CLASSES}")
  quantizer_type = _get(vq_cfg, "quantizer_type", "lookup")
  if quantizer_type not in QUANTIZER_TYPES:
    raise ValueError(f"model.vq_model.quantizer_type={quantizer_type!r} is not supported; use one of {QUANTIZER_TYPES}")
  if model_class == "taming":
    if quantizer_type != "lookup":
      raise ValueError("model_class 'taming' only exists with quantizer_type 'lookup'")
    return
  token_size = int(_require(vq_cfg, "token_size"))
  if token_size < 1:
    raise ValueError(f"model.vq_model.token_size must be >= 1, got {token_size}")
  if quantizer_type == "lookup-free" and token_size > MAX_TOKEN_BITS:
    raise ValueError(f"model.vq_model.token_size={token_size} bits is out of range for LFQ (1..{MAX_TOKEN_BITS})")
  if codebook_size_of(vq_cfg) < 1:
    raise ValueError("model.vq_model.codebook_size must be >= 1")
  mult = list(_require(vq_cfg, "channel_mult"))
  num_res = int(_require(vq_cfg, "num_resolutions"))
  if len(mult) != num_res:
    raise ValueError(f"model.vq_model.channel_mult has {len(mult)} entries but num_resolutions is {num_res}")
  hidden = int(_require(vq_cfg, "hidden_channels"))
  for m in mult:
    if (hidden * m) % 32:
      raise ValueError(f"model.vq_model.hidden_channels * channel_mult = {hidden * m} is not divisible by 32 (GroupNorm groups)")
  if int(_require(vq_cfg, "num_res_blocks")) < 1:
    raise ValueError("model.vq_model.num_res_blocks must be >= 1")


def build_tokenizer_module(vq_cfg: Mapping[str, Any], *, dtype: Any = jnp.float32,
                           param_dtype: Any = jnp.float32, precision: Any = None) -> nn.Module:
  """The flax module for a ``model.vq_model`` config (reference key names)."""
  validate_vq_config(vq_cfg)
  model_class = vq_cfg["model_class"]
  if model_class == "taming":
    return TamingVQModel(codebook_size=int(_get(vq_cfg, "codebook_size", 1024)),
                         token_size=int(_get(vq_cfg, "token_size", 256)), precision=precision)
  common = dict(
      commitment_cost=float(_get(vq_cfg, "commitment_cost", 0.25)),
      entropy_loss_weight=float(_get(vq_cfg, "entropy_loss_weight", 0.0)),
      entropy_loss_temperature=float(_get(vq_cfg, "entropy_loss_temperature", 0.01)),
      entropy_gamma=float(_get(vq_cfg, "entropy_gamma", 1.0)),
  )
  if vq_cfg["quantizer_type"] == "lookup-free":
    quantizer = LookupFreeQuantizer(int(vq_cfg["token_size"]), **common)
  else:
    quantizer = VectorQuantizer(codebook_size_of(vq_cfg), int(vq_cfg["token_size"]),
                                use_l2_normalisation=bool(_get(vq_cfg, "use_l2_normalisation", False)),
                                param_dtype=param_dtype, **common)
  return ConvVQModel(
      hidden_channels=int(vq_cfg["hidden_channels"]),
      channel_mult=tuple(int(m) for m in vq_cfg["channel_mult"]),
      num_res_blocks=int(vq_cfg["num_res_blocks"]),
      token_size=int(vq_cfg["token_size"]),
      quantize=quantizer,
      num_channels=int(_get(vq_cfg, "num_channels", 3)),
      sample_with_conv=bool(_get(vq_cfg, "sample_with_conv", True)),
      legacy_decoder=model_class == "maskgit",
      num_res_blocks_decoder=_get(vq_cfg, "num_res_blocks_decoder"),
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
