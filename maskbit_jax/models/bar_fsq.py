"""BAR's binary FSQ quantizer (finite scalar quantization with 2 levels per channel).

Each of the K channels of a token becomes one bit; there is no codebook and no
auxiliary loss. The reference quantises a pre-quantiser value ``z`` as

  bound(z) = tanh(z + shift) * half_l - 0.5,   half_l = 0.5005, shift = atanh(0.5 / half_l)
  code     = 2 * round_ste(bound(z)) + 1       in {-1, +1}
  bit      = (code + 1) / 2                    in {0, 1}

so the sign threshold sits at ``z = -shift ~ -3.8007``, not at 0, and
``z = -shift`` exactly gives ``round(-0.5) = -0`` (round half to even), i.e.
bit 1. The constants are the reference's float32 values and every step is
float32, so values on the threshold quantise as in the reference. The
straight-through gradient is ``2 * half_l * (1 - tanh^2(z + shift))``.

Bits are never packed by the reference: tokenizer, pretokenized data and
generator all carry ``[B, cells, K]`` tensors of {0, 1} (flattened to
``[B, cells*K]`` for the generator, bits of cell c at columns ``[c*K, (c+1)*K)``).
``maskbit_jax.bits.pack_bits`` / ``unpack_bits`` give an integer index per
token when one is wanted, with the FSQ basis of the reference (the project's
bit convention: channel k has weight 2^k, channel 0 least significant).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# The bit helpers live in maskbit_jax.bits; imported here so bar_fsq.pack_bits etc. keep working.
from maskbit_jax.bits import bits_to_codes, codes_to_bits, flatten_bits, pack_bits, unflatten_bits, unpack_bits
from maskbit_jax.models import initializers
from maskbit_jax.models.layers import dense

LEVELS = 2
FSQ_EPS = 1e-3
# The reference computes these in float32: half_l = (levels - 1) * (1 + eps) / 2,
# offset = 0.5 (even level count), shift = atanh(offset / half_l).
HALF_L = np.float32(np.float32(LEVELS - 1) * np.float32(1.0 + FSQ_EPS)) / np.float32(2.0)
OFFSET = np.float32(0.5)
SHIFT = np.float32(np.arctanh(np.float64(OFFSET / HALF_L)))


def fsq_bound(z: jax.Array) -> jax.Array:
  """``tanh(z + shift) * half_l - offset`` in float32 (values in (-1.0005, 0.0005))."""
  z = jnp.asarray(z, jnp.float32)
  return jnp.tanh(z + SHIFT) * HALF_L - OFFSET


def round_ste(x: jax.Array) -> jax.Array:
  """Round half to even with a straight-through (identity) gradient."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def fsq_codes(z: jax.Array) -> jax.Array:
  """Pre-quantiser values ``[..., K]`` -> codes in {-1, +1} (float32, straight-through gradient)."""
  return round_ste(fsq_bound(z)) * 2.0 + 1.0


def _torch_linear(features: int, fan_in: int, axes: tuple[str, str], **kw) -> nn.Dense:
  # The reference builds FSQ after its trunc-normal re-initialisation, so both projections keep
  # torch's nn.Linear defaults: kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  return dense(features, axes, kernel_init=initializers.torch_kernel, bias_init=initializers.torch_bias(fan_in), **kw)


__all__ = ["BinaryFSQ", "HALF_L", "LEVELS", "OFFSET", "SHIFT", "bits_to_codes", "codes_to_bits", "flatten_bits",
           "fsq_bound", "fsq_codes", "pack_bits", "round_ste", "unflatten_bits", "unpack_bits"]


class BinaryFSQ(nn.Module):
  """The reference ``FSQ``: ``in_proj`` (features -> K), binary quantisation, ``out_proj`` (K -> decoder width).

  ``in_features`` / ``out_features`` of None mean identity projections (the
  reference's ``nn.Identity``); ``with_in_proj=False`` leaves ``in_proj`` out of
  the tree (a decode-only tokenizer). The quantiser always runs in float32,
  like the reference's autocast-disabled forward.
  """

  token_size: int
  in_features: int | None = None
  out_features: int | None = None
  with_in_proj: bool = True
  param_dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype, precision=self.precision)
    if self.in_features is not None and self.with_in_proj:
      self.in_proj = _torch_linear(self.token_size, self.in_features, ("embed", "bits"), **kw)
    if self.out_features is not None:
      self.out_proj = _torch_linear(self.out_features, self.token_size, ("bits", "embed"), **kw)

  def _project_out(self, codes: jax.Array) -> jax.Array:
    return codes if self.out_features is None else self.out_proj(codes)

  def __call__(self, z_blc: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Features ``[B, L, C]`` -> (``z_quantized`` ``[B, L, out]``, results).

    Results: ``min_encoding_indices`` (int32 bits ``[B, L, K]``), ``codes``
    (+-1, float32, straight-through) and ``pre_quant`` (the ``in_proj`` output).
    """
    z = jnp.asarray(z_blc, jnp.float32)
    if self.in_features is not None:
      if not self.with_in_proj:
        raise ValueError("this BinaryFSQ was built without in_proj (decode only)")
      z = self.in_proj(z)
    if z.shape[-1] != self.token_size:
      raise ValueError(f"FSQ expects {self.token_size} channels, got {z.shape[-1]}")
    codes = fsq_codes(z)
    return self._project_out(codes), dict(min_encoding_indices=codes_to_bits(codes), codes=codes, pre_quant=z)

  def get_codebook_entry(self, bits: jax.Array) -> jax.Array:
    """Bits ``[B, L*K]`` or ``[B, L, K]`` in {0, 1} -> decoder tokens ``out_proj(2 b - 1)`` ``[B, L, out]``."""
    return self._project_out(bits_to_codes(unflatten_bits(jnp.asarray(bits), self.token_size)))
