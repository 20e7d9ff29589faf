"""The bit convention shared by MaskBit and BAR: a token of K bits and its integer index.

Bit k of a token is latent channel k and carries weight 2^k (channel 0 is the
least significant bit), so the index of bits ``b_0 .. b_{K-1}`` is
``sum_k b_k 2^k``. A bit has two spellings: {0, 1} (``bits``, what BAR's data,
tokenizer and generator carry) and -1/+1 (``codes``, the LFQ / FSQ latent
values). A MaskBit generator splits an index into ``M`` sub-tokens of ``K / M``
bits each: split m holds bits ``[m*K/M, (m+1)*K/M)``, split 0 the least
significant ones. BAR flattens ``[B, cells, K]`` bits to ``[B, cells*K]``, cell
major, bit fastest.

The jnp functions trace under jit; the ``*_np`` ones are for data pipelines and
checkpoint buffers (no device arrays).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MAX_TOKEN_BITS = 30  # indices are int32


def check_token_bits(token_bits: int) -> int:
  """``token_bits`` if an index of that many bits fits an int32, else a ValueError."""
  if token_bits > MAX_TOKEN_BITS:
    raise ValueError(f"{token_bits} bits do not fit an int32 index (at most {MAX_TOKEN_BITS})")
  return token_bits


def _weights(token_bits: int) -> jax.Array:
  return jnp.left_shift(jnp.int32(1), jnp.arange(check_token_bits(token_bits), dtype=jnp.int32))


# ----------------------------------------------------------------------------- jnp: bits <-> indices

def bits_to_indices(bits_bhwk: jax.Array) -> jax.Array:
  """Bits ``[..., K]`` (any real values; > 0 means 1) -> int32 indices ``[...]``.

  Takes either spelling: {0, 1} bits or -1/+1 codes. A value of exactly 0
  counts as the low level (-1 / 0), as in both references.
  """
  weights = _weights(bits_bhwk.shape[-1])
  return jnp.sum(jnp.where(jnp.asarray(bits_bhwk) > 0, weights, 0), axis=-1, dtype=jnp.int32)


def pack_bits(bits_blk: jax.Array) -> jax.Array:
  """Bits ``[..., K]`` in {0, 1} -> int32 indices ``[...]`` (BAR's name for ``bits_to_indices``)."""
  return bits_to_indices(bits_blk)


def unpack_bits(indices: jax.Array, token_bits: int) -> jax.Array:
  """Int indices ``[...]`` -> int32 bits ``[..., K]`` in {0, 1} (inverse of ``pack_bits``)."""
  shifts = jnp.arange(token_bits, dtype=jnp.int32)
  return jnp.right_shift(jnp.asarray(indices).astype(jnp.int32)[..., None], shifts) & 1


def indices_to_bits(indices: jax.Array, token_bits: int, dtype: Any = jnp.float32) -> jax.Array:
  """Indices ``[...]`` -> codes ``[..., K]`` as -1/+1 in ``dtype`` (bit k = channel k)."""
  return (unpack_bits(indices, token_bits) * 2 - 1).astype(dtype)


def codebook(token_bits: int) -> jax.Array:
  """All ``2^K`` codes as -1/+1 rows ``[2^K, K]`` float32, row i the code of index i."""
  return indices_to_bits(jnp.arange(2**check_token_bits(token_bits), dtype=jnp.int32), token_bits)


# ----------------------------------------------------------------------------- jnp: the two spellings

def codes_to_bits(codes: jax.Array) -> jax.Array:
  """Codes in {-1, +1} (float, possibly straight-through) -> int32 bits in {0, 1}."""
  bits = jnp.round((jnp.asarray(codes, jnp.float32) + 1.0) / 2.0).astype(jnp.int32)
  return jnp.clip(bits, 0, 1)


def bits_to_codes(bits: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """Bits in {0, 1} -> codes in {-1, +1} in ``dtype`` (computed in float32)."""
  return (jnp.asarray(bits).astype(jnp.float32) * 2.0 - 1.0).astype(dtype)


# ----------------------------------------------------------------------------- jnp: BAR's flat layout

def flatten_bits(bits_blk: jax.Array) -> jax.Array:
  """``[B, cells..., K]`` -> ``[B, cells*K]`` (cell-major, bit fastest)."""
  return bits_blk.reshape(bits_blk.shape[0], -1)


def unflatten_bits(bits_bn: jax.Array, token_bits: int) -> jax.Array:
  """``[B, cells*K]`` (or already ``[B, cells, K]``) -> ``[B, cells, K]``."""
  if bits_bn.ndim == 3:
    if bits_bn.shape[-1] != token_bits:
      raise ValueError(f"bits have {bits_bn.shape[-1]} per token, the tokenizer has {token_bits}")
    return bits_bn
  if bits_bn.shape[-1] % token_bits:
    raise ValueError(f"{bits_bn.shape[-1]} bits per image is not a multiple of {token_bits} bits per token")
  return bits_bn.reshape(bits_bn.shape[0], -1, token_bits)


def indices_to_flat_bits(indices_bhw: jax.Array, token_bits: int) -> jax.Array:
  """Indices ``[B, h, w]`` -> int32 bits ``[B, h*w*K]`` in {0, 1}: MaskBit tokens in BAR's layout."""
  return flatten_bits(unpack_bits(indices_bhw, token_bits))


# ----------------------------------------------------------------------------- jnp: codebook splits

def bits_per_split(token_bits: int, splits: int) -> int:
  """``token_bits / splits``, or a ValueError when the splits do not divide the bits."""
  if splits < 1 or token_bits % splits:
    raise ValueError(f"codebook splits ({splits}) must divide the token bits ({token_bits})")
  check_token_bits(token_bits)
  return token_bits // splits


def split_tokens(tokens: jax.Array, token_bits: int, splits: int) -> jax.Array:
  """Indices ``[...]`` -> sub-tokens ``[..., splits]`` (int32, each in ``[0, 2^(bits/splits))``)."""
  bits = bits_per_split(token_bits, splits)
  shifts = jnp.arange(splits, dtype=jnp.int32) * bits
  return jnp.right_shift(jnp.asarray(tokens).astype(jnp.int32)[..., None], shifts) & ((1 << bits) - 1)


def combine_tokens(tokens: jax.Array, token_bits: int) -> jax.Array:
  """Sub-tokens ``[..., splits]`` -> indices ``[...]`` (int32): ``sum_m t_m << (m * bits)``."""
  tokens = jnp.asarray(tokens).astype(jnp.int32)
  splits = tokens.shape[-1]
  bits = bits_per_split(token_bits, splits)
  shifts = jnp.arange(splits, dtype=jnp.int32) * bits
  # Splits occupy disjoint bits, so the sum is the bitwise OR the reference builds.
  return jnp.sum(jnp.left_shift(tokens, shifts), axis=-1, dtype=jnp.int32)


# ----------------------------------------------------------------------------- numpy

def bit_weights_np(token_bits: int) -> np.ndarray:
  """int32 ``[K]``: 2^k (the references' ``bits_to_indices`` buffer)."""
  return (2 ** np.arange(check_token_bits(token_bits), dtype=np.int64)).astype(np.int32)


def unpack_bits_np(indices: np.ndarray, token_bits: int) -> np.ndarray:
  """Int indices ``[...]`` -> int64 bits ``[..., K]`` in {0, 1}."""
  return (np.asarray(indices, np.int64)[..., None] >> np.arange(token_bits)) & 1


def codebook_np(token_bits: int) -> np.ndarray:
  """float32 ``[2^K, K]`` -1/+1 rows (the reference LFQ's ``codebook`` buffer)."""
  bits = unpack_bits_np(np.arange(2**check_token_bits(token_bits), dtype=np.int64), token_bits)
  return (bits * 2.0 - 1.0).astype(np.float32)
