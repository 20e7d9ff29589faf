"""The VQGAN+ convolutional encoder (also the encoder of the legacy MaskGIT tokenizer)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import layers
from maskbit_jax.models.vqgan_blocks import GROUP_NORM_EPS, ResidualStage


class ConvEncoder(nn.Module):
  """Images ``[B, H, W, C]`` -> latents ``[B, H/2^(L-1), W/2^(L-1), token_size]``.

  Stage i has ``num_res_blocks`` residual blocks with
  ``hidden_channels * channel_mult[i]`` channels; every stage but the last
  halves the resolution (3x3 stride-2 conv if ``sample_with_conv``, else 2x2
  average pooling). Intermediates are sown into the ``intermediates`` collection.
  """

  hidden_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  token_size: int
  sample_with_conv: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, images_bhwc: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    num_levels = len(self.channel_mult)
    h = layers.conv(self.hidden_channels, 3, use_bias=False, name="conv_in", **kw)(images_bhwc)
    self.sow("intermediates", "enc_conv_in", h)
    for i, mult in enumerate(self.channel_mult):
      last = i == num_levels - 1
      resample = None if last else ("down_conv" if self.sample_with_conv else "avg_pool")
      h = ResidualStage(self.hidden_channels * mult, self.num_res_blocks, resample, name=f"down_{i}", **kw)(h)
      self.sow("intermediates", f"enc_down_{i}", h)
    h = ResidualStage(h.shape[-1], self.num_res_blocks, name="mid", **kw)(h)
    self.sow("intermediates", "enc_mid", h)
    h = layers.group_norm(GROUP_NORM_EPS, name="norm_out", dtype=self.dtype, param_dtype=self.param_dtype)(h)
    self.sow("intermediates", "enc_norm_out", h)
    h = nn.silu(h)
    z_bhwc = layers.conv(self.token_size, 1, name="conv_out", **kw)(h)
    return z_bhwc
