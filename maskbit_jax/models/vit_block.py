"""The pre-norm ViT block ``x += attn(norm1(x)); x += mlp(norm2(x))`` of BAR's decoder and the DINO ViT.

Packed ``qkv`` projection (bias, heads contiguous, scale ``hd^-0.5``), a GELU
MLP of ``mlp_ratio`` and LayerNorm; parameter names are the references'
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models.attention import dot_product_attention
from maskbit_jax.models.layers import dense, layer_norm

DECODER_LN_EPS = 1e-5  # torch.nn.LayerNorm default, BAR's decoder


class ViTAttention(nn.Module):
  """Packed-``qkv`` self-attention (reshape ``[B, N, 3, H, hd]``: q, k, v are consecutive blocks)."""

  width: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bnd: jax.Array) -> jax.Array:
    b, n, _ = x_bnd.shape
    hd = self.width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    qkv = dense(3 * self.width, ("embed", "qkv"), name="qkv", **kw)(x_bnd).reshape(b, n, 3, self.num_heads, hd)
    out = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], precision=self.precision)
    return dense(self.width, ("attn_out", "embed"), name="proj", **kw)(out.reshape(b, n, self.width))


class _Mlp(nn.Module):
  """Holds ``fc1`` / ``fc2`` under the name ``mlp`` (the reference's ``block.mlp.fc1``)."""

  width: int
  hidden: int
  approximate_gelu: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    x = dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    return dense(self.width, ("mlp", "embed"), name="fc2", **kw)(nn.gelu(x, approximate=self.approximate_gelu))


class DecoderBlock(nn.Module):
  """``ViTBlock`` with the reference's parameter layout (``norm1``, ``attn``, ``norm2``, ``mlp.fc1/fc2``).

  ``norm_eps`` and ``approximate_gelu`` are the BAR decoder's by default (``models.bar_vit_decoder``);
  the DINO backbone of BAR-FSQ training's discriminator is this block with its own
  (``models.dino_discriminator``)."""

  width: int
  num_heads: int
  mlp_ratio: float = 4.0
  norm_eps: float = DECODER_LN_EPS
  approximate_gelu: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    norm = lambda name: layer_norm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    x = x + ViTAttention(self.width, self.num_heads, name="attn", **kw)(norm("norm1")(x))
    mlp = _Mlp(self.width, int(self.width * self.mlp_ratio), self.approximate_gelu, name="mlp", **kw)
    return x + mlp(norm("norm2")(x))
