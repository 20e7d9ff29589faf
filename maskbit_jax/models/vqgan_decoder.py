"""The VQGAN+ decoder and the legacy MaskGIT decoder (same maths, other parameter order)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import layers
from maskbit_jax.models.vqgan_blocks import GROUP_NORM_EPS, ResidualStage


class ConvDecoder(nn.Module):
  """Latents ``[B, h, w, token_size]`` -> images ``[B, h*2^(L-1), w*2^(L-1), num_channels]``.

  Applies stages from the deepest level to full resolution; every stage but the
  last up-samples (nearest x2 + 3x3 conv). The two decoders differ only in how
  their stages are named, which the released checkpoints depend on:

  * ``legacy=False`` (VQGAN+): ``up_0`` is the deepest stage, applied first.
  * ``legacy=True`` (MaskGIT, ``model_class: maskgit``): ``up_i`` is level i,
    so ``up_0`` is the full-resolution stage, applied last.

  Decoded images are not clamped. Intermediates go to ``intermediates``.
  """

  hidden_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  num_channels: int = 3
  legacy: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, z_bhwc: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    num_levels = len(self.channel_mult)
    block_in = self.hidden_channels * self.channel_mult[-1]
    h = layers.conv(block_in, 3, name="conv_in", **kw)(z_bhwc)
    self.sow("intermediates", "dec_conv_in", h)
    h = ResidualStage(block_in, self.num_res_blocks, name="mid", **kw)(h)
    self.sow("intermediates", "dec_mid", h)
    for j, level in enumerate(reversed(range(num_levels))):
      name = f"up_{level}" if self.legacy else f"up_{j}"
      resample = "up" if level > 0 else None
      h = ResidualStage(self.hidden_channels * self.channel_mult[level], self.num_res_blocks, resample, name=name, **kw)(h)
      self.sow("intermediates", f"dec_up_{j}", h)
    h = layers.group_norm(GROUP_NORM_EPS, name="norm_out", dtype=self.dtype, param_dtype=self.param_dtype)(h)
    h = nn.silu(h)
    return layers.conv(self.num_channels, 3, name="conv_out", **kw)(h)
