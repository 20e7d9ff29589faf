"""Splitting a token index into ``M`` sub-tokens of ``token_bits / M`` bits and back.

The generator predicts each split as its own class; split ``m`` holds bits
``[m*b, (m+1)*b)`` of the index, split 0 the least significant ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_TOKEN_BITS = 30  # combined indices are int32


def _bits_per_split(token_bits: int, splits: int) -> int:
  if splits < 1 or token_bits % splits:
    raise ValueError(f"codebook splits ({splits}) must divide the token bits ({token_bits})")
  if token_bits > MAX_TOKEN_BITS:
    raise ValueError(f"{token_bits} bits do not fit an int32 index (at most {MAX_TOKEN_BITS})")
  return token_bits // splits


def split_tokens(tokens: jax.Array, token_bits: int, splits: int) -> jax.Array:
  """Indices ``[...]`` -> sub-tokens ``[..., splits]`` (int32, each in ``[0, 2^(bits/splits))``)."""
  bits = _bits_per_split(token_bits, splits)
  shifts = jnp.arange(splits, dtype=jnp.int32) * bits
  return jnp.right_shift(jnp.asarray(tokens).astype(jnp.int32)[..., None], shifts) & ((1 << bits) - 1)


def combine_tokens(tokens: jax.Array, token_bits: int) -> jax.Array:
  """Sub-tokens ``[..., splits]`` -> indices ``[...]`` (int32): ``sum_m t_m << (m * bits)``."""
  tokens = jnp.asarray(tokens).astype(jnp.int32)
  splits = tokens.shape[-1]
  bits = _bits_per_split(token_bits, splits)
  shifts = jnp.arange(splits, dtype=jnp.int32) * bits
  # Splits occupy disjoint bits, so the sum is the bitwise OR the reference builds.
  return jnp.sum(jnp.left_shift(tokens, shifts), axis=-1, dtype=jnp.int32)
