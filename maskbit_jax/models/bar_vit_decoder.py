"""BAR tokenizer decoder: a ViT over the quantised tokens with a pixel-shuffle head (reference ``SigLIP2Decoder``).

``z [B, g*g, W]`` (the FSQ ``out_proj`` output, cells row-major) ->

1. a learned class token is PREPENDED, then ``positional_embedding [g*g+1, W]``
   is added, then ``ln_pre`` (LayerNorm AFTER the positions);
2. pre-norm ViT blocks: ``x += attn(norm1(x))``; ``x += mlp(norm2(x))`` with a
   packed ``qkv`` projection (bias, heads contiguous, scale ``hd^-0.5``), an
   exact-erf GELU MLP of ratio 4 and LayerNorm eps 1e-5 everywhere;
3. the class token is dropped, ``ln_post``, the tokens are laid out as a
   ``g x g`` map, a 1x1 conv gives ``p*p*3`` channels per cell, depth-to-space
   with channel fastest (torch ``'b (p1 p2 c) h w -> b c (h p1) (w p2)'``), and
   a 3x3 conv (padding 1) gives the image.

Images are NHWC; a trained decoder targets [-1, 1]. The released decoder is
hard-coded to width 1024, 24 layers, 16 heads; here those are fields.

With ``clip_align`` (``losses.clip_loss_weight > 0`` in the reference) the
training-only ``clip_projector`` (Linear-SiLU-Linear-SiLU-Linear to the SigLIP2
width, hard-coded 1152) regresses the frozen SigLIP2 features from the output
of block ``clip_align_layer_id``; ``clip_pred`` is None otherwise.

Intermediates are sown into ``intermediates``: ``dec_tokens_plus_pos``,
``dec_ln_pre``, ``dec_block<i>``, ``dec_ln_post``, ``dec_ffn`` (NHWC, before
``conv_out``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import layers
from maskbit_jax.models.layers import dense, layer_norm
from maskbit_jax.models.vit_block import DECODER_LN_EPS, DecoderBlock

CLIP_TARGET_WIDTH = 1152  # SigLIP2 so400m width, hard-coded in the reference
CLIP_HIDDEN = 2048


def depth_to_space(x_bhwc: jax.Array, patch_size: int, channels: int) -> jax.Array:
  """``[B, g, g, p*p*c]`` with channel order (p1, p2, c) -> ``[B, g*p, g*p, c]``."""
  b, h, w, _ = x_bhwc.shape
  x = x_bhwc.reshape(b, h, w, patch_size, patch_size, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * patch_size, w * patch_size, channels)


class BarViTDecoder(nn.Module):
  """``z [B, g*g, W] -> (image [B, g*p, g*p, 3], clip_pred [B, g*g, 1152] | None)``."""

  grid_size: int
  patch_size: int = 16
  width: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  mlp_ratio: float = 4.0
  out_channels: int = 3
  clip_align: bool = False
  clip_align_layer_id: int = 2
  clip_target_width: int = CLIP_TARGET_WIDTH
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, z_bld: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    b, n, d = z_bld.shape
    g = self.grid_size
    if n != g * g or d != self.width:
      raise ValueError(f"decoder expects [B, {g * g}, {self.width}] tokens, got {z_bld.shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    init = nn.initializers.normal(self.width ** -0.5)
    cls = self.param("class_embedding", nn.with_logical_partitioning(init, (None, "embed")), (1, self.width),
                     self.param_dtype)
    pos = self.param("positional_embedding", nn.with_logical_partitioning(init, ("length", "embed")),
                     (g * g + 1, self.width), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls[None].astype(self.dtype), (b, 1, self.width)),
                         z_bld.astype(self.dtype)], axis=1)
    x = x + pos.astype(self.dtype)
    self.sow("intermediates", "dec_tokens_plus_pos", x)
    x = layer_norm(DECODER_LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_pre")(x)
    self.sow("intermediates", "dec_ln_pre", x)
    clip_pred = None
    for i in range(self.num_layers):
      x = DecoderBlock(self.width, self.num_heads, self.mlp_ratio, name=f"transformer_{i}", **kw)(x)
      self.sow("intermediates", f"dec_block{i}", x)
      if self.clip_align and i == self.clip_align_layer_id:
        h = dense(CLIP_HIDDEN, ("embed", "mlp"), name="clip_projector_0", **kw)(x)
        h = dense(CLIP_HIDDEN, ("mlp", "embed"), name="clip_projector_2", **kw)(nn.silu(h))
        h = dense(self.clip_target_width, ("embed", None), name="clip_projector_4", **kw)(nn.silu(h))
        clip_pred = h[:, 1:1 + g * g]
    if self.clip_align and clip_pred is None:
      raise ValueError(f"clip_align_layer_id {self.clip_align_layer_id} is not below num_layers {self.num_layers}")
    x = layer_norm(DECODER_LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_post")(x[:, 1:1 + g * g])
    self.sow("intermediates", "dec_ln_post", x)
    x = x.reshape(b, g, g, self.width)
    x = layers.conv(self.patch_size * self.patch_size * self.out_channels, 1, padding="VALID", name="ffn_0", **kw)(x)
    x = depth_to_space(x, self.patch_size, self.out_channels)
    self.sow("intermediates", "dec_ffn", x)
    x = layers.conv(self.out_channels, 3, padding=((1, 1), (1, 1)), name="conv_out", **kw)(x)
    return x, clip_pred
