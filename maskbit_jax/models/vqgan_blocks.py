"""Residual blocks and stages of the VQGAN+ / MaskGIT convolutional tokenizers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import layers

GROUP_NORM_EPS = 1e-6


class ResidualBlock(nn.Module):
  """GroupNorm -> SiLU -> 3x3 conv (no bias), twice, plus a shortcut.

  When the channel count changes, the reference applies its 1x1 ``nin_shortcut``
  to the block's own OUTPUT ``h`` (``h + nin_shortcut(h)``), not to its input
  as Taming/MaskGIT do. Released checkpoints were trained that way, so we keep it.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    layers.check_group_norm_channels(x_bhwc.shape[-1])
    layers.check_group_norm_channels(self.features)
    h = layers.group_norm(GROUP_NORM_EPS, name="norm1", **kw)(x_bhwc)
    h = nn.silu(h)
    h = layers.conv(self.features, 3, use_bias=False, precision=self.precision, name="conv1", **kw)(h)
    h = layers.group_norm(GROUP_NORM_EPS, name="norm2", **kw)(h)
    h = nn.silu(h)
    h = layers.conv(self.features, 3, use_bias=False, precision=self.precision, name="conv2", **kw)(h)
    if x_bhwc.shape[-1] != self.features:
      residual = layers.conv(self.features, 1, use_bias=False, precision=self.precision, name="nin_shortcut", **kw)(h)
    else:
      residual = x_bhwc
    return h + residual


class ResidualStage(nn.Module):
  """``num_res_blocks`` residual blocks, then optionally a resampling step.

  resample: None, "down_conv" (3x3 stride-2 conv with bias), "avg_pool" (2x2),
  or "up" (nearest x2 then 3x3 ``upsample_conv`` with bias).
  """

  features: int
  num_res_blocks: int
  resample: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    h = x_bhwc
    for j in range(self.num_res_blocks):
      h = ResidualBlock(self.features, name=f"res_blocks_{j}", **kw)(h)
    if self.resample == "down_conv":
      h = layers.conv(h.shape[-1], 3, strides=2, name="down_conv", **kw)(h)
    elif self.resample == "avg_pool":
      h = layers.avg_pool_2x(h)
    elif self.resample == "up":
      h = layers.upsample_nearest_2x(h)
      h = layers.conv(self.features, 3, name="upsample_conv", **kw)(h)
    elif self.resample is not None:
      raise ValueError(f"unknown resample mode {self.resample!r}")
    return h
