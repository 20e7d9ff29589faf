"""The original Taming VQGAN (Esser et al.), as the reference's ``taming_vqgan_tokenizer``.

Its architecture is fixed by the released checkpoint: 128 channels, multipliers
(1, 1, 2, 2, 4), two residual blocks per level, self-attention at the 16x16
level, 256-d latents and a 1024 x 256 codebook. Unlike the VQGAN+ tokenizer it
maps [0, 1] images to [-1, 1] itself and back on decoding, uses biased convs,
applies its shortcut to the block input, and pads its stride-2 convs with one
zero row/column after (not TF-style SAME).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import linen as nn

from maskbit_jax.models import layers
from maskbit_jax.models.attention import dot_product_attention

GROUP_NORM_EPS = 1e-6
# The attention placement follows the reference's nominal 256 px resolution,
# whatever the size of the image actually fed in.
NOMINAL_RESOLUTION = 256
_PAD1 = ((1, 1), (1, 1))


class TamingResnetBlock(nn.Module):
  features: int
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    h = layers.group_norm(GROUP_NORM_EPS, name="norm1")(x_bhwc)
    h = layers.conv(self.features, 3, padding=_PAD1, precision=self.precision, name="conv1")(nn.swish(h))
    h = layers.group_norm(GROUP_NORM_EPS, name="norm2")(h)
    h = layers.conv(self.features, 3, padding=_PAD1, precision=self.precision, name="conv2")(nn.swish(h))
    if x_bhwc.shape[-1] != self.features:
      x_bhwc = layers.conv(self.features, 1, padding="VALID", precision=self.precision, name="nin_shortcut")(x_bhwc)
    return x_bhwc + h


class TamingAttnBlock(nn.Module):
  """Single-head spatial self-attention with 1x1-conv projections."""

  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    b, h, w, c = x_bhwc.shape
    n = layers.group_norm(GROUP_NORM_EPS, name="norm")(x_bhwc)
    proj = lambda name: layers.conv(c, 1, padding="VALID", precision=self.precision, name=name)(n).reshape(b, h * w, c)
    q, k, v = (proj(name)[:, :, None] for name in ("q", "k", "v"))   # one head: [B, h*w, 1, C]
    out = dot_product_attention(q, k, v, precision=self.precision).reshape(b, h, w, c)
    return x_bhwc + layers.conv(c, 1, padding="VALID", precision=self.precision, name="proj_out")(out)


class TamingEncoder(nn.Module):
  ch: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  z_channels: int = 256
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    p = self.precision
    h = layers.conv(self.ch, 3, padding=_PAD1, precision=p, name="conv_in")(x_bhwc)
    res = NOMINAL_RESOLUTION
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = TamingResnetBlock(self.ch * mult, p, name=f"down_{i}_block_{j}")(h)
        if res in self.attn_resolutions:
          h = TamingAttnBlock(p, name=f"down_{i}_attn_{j}")(h)
      if i != len(self.ch_mult) - 1:
        h = layers.conv(h.shape[-1], 3, strides=2, padding=((0, 1), (0, 1)), precision=p,
                        name=f"down_{i}_downsample_conv")(h)
        res //= 2
    h = TamingResnetBlock(h.shape[-1], p, name="mid_block_1")(h)
    h = TamingAttnBlock(p, name="mid_attn_1")(h)
    h = TamingResnetBlock(h.shape[-1], p, name="mid_block_2")(h)
    h = nn.swish(layers.group_norm(GROUP_NORM_EPS, name="norm_out")(h))
    return layers.conv(self.z_channels, 3, padding=_PAD1, precision=p, name="conv_out")(h)


class TamingDecoder(nn.Module):
  ch: int = 128
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  precision: Any = None

  @nn.compact
  def __call__(self, z_bhwc: jax.Array) -> jax.Array:
    p = self.precision
    num_levels = len(self.ch_mult)
    res = NOMINAL_RESOLUTION // 2 ** (num_levels - 1)
    h = layers.conv(self.ch * self.ch_mult[-1], 3, padding=_PAD1, precision=p, name="conv_in")(z_bhwc)
    h = TamingResnetBlock(h.shape[-1], p, name="mid_block_1")(h)
    h = TamingAttnBlock(p, name="mid_attn_1")(h)
    h = TamingResnetBlock(h.shape[-1], p, name="mid_block_2")(h)
    for i in reversed(range(num_levels)):
      for j in range(self.num_res_blocks + 1):
        h = TamingResnetBlock(self.ch * self.ch_mult[i], p, name=f"up_{i}_block_{j}")(h)
        if res in self.attn_resolutions:
          h = TamingAttnBlock(p, name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = layers.upsample_nearest_2x(h)
        h = layers.conv(h.shape[-1], 3, padding=_PAD1, precision=p, name=f"up_{i}_upsample_conv")(h)
        res *= 2
    h = nn.swish(layers.group_norm(GROUP_NORM_EPS, name="norm_out")(h))
    return layers.conv(self.out_ch, 3, padding=_PAD1, precision=p, name="conv_out")(h)
