"""The tokenizer API: ``load_tokenizer`` and ``Tokenizer``.

    tok = maskbit_jax.load_tokenizer("configs/maskbit_tokenizer_12bit.py", "maskbit_tokenizer_12bit.bin")
    tokens = tok.encode(images)          # float32 [B, H, W, 3] in [0, 1] -> int32 [B, H/16, W/16]
    recon = tok.decode_tokens(tokens)    # -> float32 [B, H, W, 3] (not clamped)
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
from maskbit_jax.config import ConfigLike, load_config, vq_model_config
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
from maskbit_jax.models.lfq_quantizer import bits_to_indices, indices_to_bits
from maskbit_jax.models.tokenizer import (abstract_tokenizer_params, build_tokenizer_module, codebook_size_of,
                                          init_tokenizer_params, latent_stride_of)

# How far outside [0, 1] an input may stray (resampling overshoot) before we
# call it the wrong range, e.g. [0, 255] or [-1, 1] images.
RANGE_SLACK = 0.1

@jax.jit
def _finite_and_range(images):
  # isfinite, not min/max: XLA's min/max reductions may drop NaN, so a NaN pixel would pass a range test
  return jnp.all(jnp.isfinite(images)), jnp.min(images), jnp.max(images)


def validate_images(images: Any, *, check_range: bool = True) -> jax.Array:
  """Checks that ``images`` are a non-empty float NHWC RGB batch of finite values in [0, 1]; returns them as
  float32 (bfloat16 and float16 convert exactly)."""
  shape = tuple(np.shape(images))
  dtype = np.asarray(images[:0]).dtype if hasattr(images, "__getitem__") else np.result_type(images)
  if len(shape) != 4:
    raise ValueError(f"images must be a 4-D NHWC batch [B, H, W, 3], got shape {shape}")
  if shape[-1] != 3:
    hint = " (this looks like NCHW; transpose to NHWC)" if shape[1] == 3 else ""
    raise ValueError(f"images must have 3 channels last (NHWC), got shape {shape}{hint}")
  if 0 in shape:
    raise ValueError(f"images is an empty batch (shape {shape}): give at least one image of at least one pixel")
  # jnp's issubdtype, not numpy's: numpy does not count bfloat16 (ml_dtypes) as floating
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"images must be floating point in [0, 1], got dtype {dtype}"
                    " (integer images: divide by 255 first)")
  images = jnp.asarray(images, jnp.float32)
  finite, lo, hi = (v.item() for v in jax.device_get(_finite_and_range(images)))
  if not finite:
    raise ValueError("images contain NaN or infinite values")
  if check_range and (lo < -RANGE_SLACK or hi > 1.0 + RANGE_SLACK):
    raise ValueError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]"
                     " (for [0, 255] divide by 255; for [-1, 1] use (x + 1) / 2)")
  return images


def check_image_side(side: int, stride: int, flag: str = "image size") -> int:
  """``side`` if it is a positive multiple of the tokenizer's ``stride`` (else the decoded image would not
  match the input), else a ValueError naming ``flag``."""
  if side < stride or side % stride:
    raise ValueError(f"{flag} {side}: must be a positive multiple of the tokenizer's latent stride {stride}")
  return side


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
  """A tokenizer module with its parameters. All methods are jitted and pure."""

  family: ClassVar[str] = "maskbit_tokenizer"
  config: ml_collections.ConfigDict
  module: nn.Module
  params: Any

  @property
  def vq_config(self) -> ml_collections.ConfigDict:
    return vq_model_config(self.config)

  @property
  def codebook_size(self) -> int:
    return codebook_size_of(self.vq_config)

  @property
  def is_lookup_free(self) -> bool:
    return self.vq_config.quantizer_type == "lookup-free"

  @property
  def token_bits(self) -> int:
    """K, the number of bits per token (LFQ only)."""
    if not self.is_lookup_free:
      raise ValueError("token_bits is defined for lookup-free (LFQ) tokenizers only")
    return int(self.vq_config.token_size)

  @property
  def latent_stride(self) -> int:
    return latent_stride_of(self.vq_config)

  @property
  def image_size(self) -> None:
    """None: any multiple of ``latent_stride`` encodes (a convolutional tokenizer)."""
    return None

  def token_grid(self, image_size: int | None = None) -> tuple[int, int]:
    """The token grid ``(h, w)`` of square ``image_size``-pixel images."""
    if not image_size or int(image_size) <= 0:
      raise ValueError("a MaskBit tokenizer's token grid follows from the image size: give image_size")
    side = int(image_size) // self.latent_stride
    return side, side

  # -- jitted pure functions of (params, inputs) -----------------------------------------
  @functools.cached_property
  def _encode_fn(self):
    return jax.jit(lambda p, x, train: self.module.apply({"params": p}, x, train, method="encode"),
                   static_argnums=2)

  @functools.cached_property
  def _decode_fn(self):
    return jax.jit(lambda p, z: self.module.apply({"params": p}, z, method="decode"))

  @functools.cached_property
  def _decode_tokens_fn(self):
    return jax.jit(lambda p, t: self.module.apply({"params": p}, t, method="decode_tokens"))

  # -- public API ------------------------------------------------------------------------
  def quantize(self, images, *, train: bool = False, validate: bool = True):
    """Images -> (quantized latents ``[B, h, w, D]``, results dict with losses and indices)."""
    images = validate_images(images) if validate else jnp.asarray(images, jnp.float32)
    return self._encode_fn(self.params, images, train)

  def encode(self, images, *, validate: bool = True) -> jax.Array:
    """float32 NHWC images in [0, 1] -> int32 tokens ``[B, h, w]``."""
    _, result = self.quantize(images, validate=validate)
    return result["min_encoding_indices"]

  def decode(self, z_q) -> jax.Array:
    """Quantized latents ``[B, h, w, D]`` -> float32 images ``[B, H, W, 3]`` (not clamped)."""
    z_q = jnp.asarray(z_q)
    if z_q.ndim != 4:
      raise ValueError(f"latents must be [B, h, w, D], got shape {z_q.shape}")
    return self._decode_fn(self.params, z_q)

  def check_tokens(self, tokens) -> jax.Array:
    tokens = np.asarray(tokens)
    if not np.issubdtype(tokens.dtype, np.integer):
      raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
    if tokens.ndim == 2:  # [B, N] with a square grid, as the reference accepts
      side = int(round(np.sqrt(tokens.shape[1])))
      if side * side != tokens.shape[1]:
        raise ValueError(f"tokens [B, N] need a square N to form a grid, got N={tokens.shape[1]}")
      tokens = tokens.reshape(tokens.shape[0], side, side)
    if tokens.ndim != 3:
      raise ValueError(f"tokens must be [B, h, w] (or [B, h*w]), got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
      raise ValueError(f"token indices must be in [0, {self.codebook_size}), "
                       f"got values in [{tokens.min()}, {tokens.max()}]")
    return jnp.asarray(tokens, jnp.int32)

  def decode_tokens(self, tokens) -> jax.Array:
    """int tokens ``[B, h, w]`` (or ``[B, h*w]``) -> float32 images ``[B, H, W, 3]``."""
    return self._decode_tokens_fn(self.params, self.check_tokens(tokens))

  def reconstruct(self, images) -> jax.Array:
    z_q, _ = self.quantize(images)
    return self.decode(z_q)

  def tokens_to_bits(self, tokens) -> jax.Array:
    """int tokens ``[...]`` -> -1/+1 bits ``[..., K]`` (channel 0 = least significant bit)."""
    return indices_to_bits(self.check_tokens(tokens) if np.ndim(tokens) in (2, 3) else jnp.asarray(tokens),
                           self.token_bits)

  def encode_bits(self, images) -> jax.Array:
    """float32 NHWC images in [0, 1] -> int32 bits ``[B, h, w, K]`` in {0, 1} (bit j has weight 2^j)."""
    return (self.tokens_to_bits(self.encode(images)) > 0).astype(jnp.int32)

  def bits_to_images(self, bits) -> jax.Array:
    """Bits ``[B, h, w, K]`` (> 0 means 1) -> float32 images ``[B, H, W, 3]`` (not clamped)."""
    return self.decode_tokens(self.bits_to_tokens(bits))

  def bits_to_tokens(self, bits) -> jax.Array:
    """Bits ``[..., K]`` (> 0 means 1) -> int32 tokens ``[...]``."""
    bits = jnp.asarray(bits)
    if bits.shape[-1] != self.token_bits:
      raise ValueError(f"bits must have {self.token_bits} channels last, got shape {bits.shape}")
    return bits_to_indices(bits)


def load_tokenizer_params(cfg: ml_collections.ConfigDict, module: nn.Module, checkpoint: str | os.PathLike):
  """Loads params from a PyTorch-format file or one of our Orbax checkpoints, strictly."""
  abstract = nn.meta.unbox(abstract_tokenizer_params(module))
  mapping = functools.partial(tokenizer_param_mapping, vq_model_config(cfg))
  return checkpointing.load_weights(
      checkpoint, abstract, kind="tokenizer", mapping=mapping,
      from_state_dict=lambda state, source: torch_state_to_flax(state, abstract, mapping(), source=source))


def load_tokenizer(config: ConfigLike, checkpoint: str | os.PathLike | None = None, *,
                   random_init: bool = False, seed: int = 0, dtype: str | None = None,
                   precision: str | None = None, overrides=(), registry=None) -> Tokenizer:
  """Builds a tokenizer from a config and loads its weights.

  Args:
    config: a ConfigDict/dict, a packaged config name (``"tokenizer_tiny"``), a ``configs/*.py`` path or a
      reference ``.yaml`` path; or a released model's name (``"maskbit_tokenizer_12bit"``, or a generator's,
      for the tokenizer it pairs with): its config, and its weights unless ``checkpoint`` is given
      (downloaded once, ``maskbit_jax.hub``).
    checkpoint: a PyTorch file (``.bin``, ``.ckpt``, ``.safetensors``,
      ``_state.npz``), a directory written by ``python -m maskbit_jax.convert``, or a released name.
      If omitted, ``experiment.vqgan_checkpoint`` of the config is used.
    registry: another weights registry (``hub.registry``'s ``override``): a mapping or a JSON file.
    random_init: use freshly initialised weights instead (for smoke tests);
      never happens implicitly.
    dtype, precision: compute dtype ("float32", "bfloat16") and matmul/conv
      precision ("default", "highest"); default from ``runtime.*`` of the config.
  """
  config, checkpoint = hub.resolve_model(config, checkpoint, "tokenizer", random_init=random_init,
                                         registry_override=registry)
  cfg = load_config(config, overrides)
  vq_cfg = vq_model_config(cfg)
  compute_dtype, prec = runtime.resolve(cfg, dtype, precision)
  module = build_tokenizer_module(vq_cfg, dtype=compute_dtype, precision=prec)
  if checkpoint is None and not random_init:
    checkpoint = (cfg.get("experiment", None) or {}).get("vqgan_checkpoint") or None
    checkpoint = hub.resolve_checkpoint(checkpoint, "tokenizer", registry)  # the config may name a release
  if checkpoint is None and not random_init:
    raise ValueError("no tokenizer checkpoint given (argument or experiment.vqgan_checkpoint); "
                     "pass random_init=True (on the command line: --random_init) for untrained weights")
  if random_init:
    params = init_tokenizer_params(module, jax.random.key(seed))
  else:
    params = load_tokenizer_params(cfg, module, checkpoint)
  return Tokenizer(cfg, module, params)
