"""Lookup-free quantization (LFQ): each latent channel becomes one bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models.entropy import grouped_terms, lfq_entropy_terms

MAX_TOKEN_BITS = 30  # indices are int32


def bits_to_indices(bits_bhwk: jax.Array) -> jax.Array:
  """Bits ``[..., K]`` (any real values; > 0 means 1) -> int32 indices ``[...]``.

  Channel k carries weight 2^k (channel 0 is the least significant bit); a value
  of exactly 0 counts as -1, as in the reference.
  """
  k = bits_bhwk.shape[-1]
  if k > MAX_TOKEN_BITS:
    raise ValueError(f"{k} bits do not fit an int32 index (at most {MAX_TOKEN_BITS})")
  weights = jnp.left_shift(jnp.int32(1), jnp.arange(k, dtype=jnp.int32))
  return jnp.sum(jnp.where(bits_bhwk > 0, weights, 0), axis=-1, dtype=jnp.int32)


def indices_to_bits(indices: jax.Array, token_bits: int, dtype=jnp.float32) -> jax.Array:
  """Indices ``[...]`` -> bits ``[..., K]`` as -1/+1 (bit k = channel k)."""
  shifts = jnp.arange(token_bits, dtype=jnp.int32)
  bits = jnp.right_shift(indices.astype(jnp.int32)[..., None], shifts) & 1
  return (bits * 2 - 1).astype(dtype)


def lfq_codebook(token_bits: int) -> jax.Array:
  """All ``2^K`` codes as -1/+1 rows ``[2^K, K]`` (the reference's ``codebook`` buffer)."""
  return indices_to_bits(jnp.arange(2**token_bits, dtype=jnp.int32), token_bits)


class LookupFreeQuantizer(nn.Module):
  """``z [B, h, w, K]`` -> (``z_q`` in {-1, +1} with straight-through gradient, results).

  Results: ``quantizer_loss``, ``commitment_loss``, ``entropy_loss``,
  ``per_sample_entropy``, ``avg_entropy`` (float32 scalars) and
  ``min_encoding_indices`` (int32 ``[B, h, w]``). The entropy terms are active
  only with ``train=True`` and a non-zero weight; they need the full
  ``[B*h*w, 2^K]`` code distribution, as the reference computes it, averaged
  over ``entropy_groups`` equal slices of the batch (the reference's per-GPU
  entropy, see ``entropy.grouped_terms``; 1: the whole batch).
  """

  token_bits: int
  commitment_cost: float = 0.25
  entropy_loss_weight: float = 0.1
  entropy_loss_temperature: float = 0.01
  entropy_gamma: float = 1.0
  entropy_groups: int = 1

  @property
  def codebook_size(self) -> int:
    return 2**self.token_bits

  @nn.compact
  def __call__(self, z_bhwk: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    z = z_bhwk.astype(jnp.float32)
    q = jnp.where(z > 0, 1.0, -1.0).astype(jnp.float32)
    indices = bits_to_indices(q)
    commitment = self.commitment_cost * jnp.mean(jnp.square(jax.lax.stop_gradient(q) - z))
    zero = jnp.zeros((), jnp.float32)
    entropy_loss, per_sample, avg = zero, zero, zero
    if train and self.entropy_loss_weight != 0.0:
      # chunked for large codebooks (18 bits: 2^18 codes per token), same values as the full softmax
      codebook = lfq_codebook(self.token_bits)
      per_sample, avg = grouped_terms(
          lambda zg: lfq_entropy_terms(zg, codebook, self.entropy_loss_temperature, self.entropy_gamma),
          z, self.entropy_groups)
      entropy_loss = self.entropy_loss_weight * (per_sample - avg)
    z_q = z + jax.lax.stop_gradient(q - z)
    return z_q, dict(
        quantizer_loss=commitment + entropy_loss,
        commitment_loss=commitment,
        entropy_loss=entropy_loss,
        per_sample_entropy=per_sample,
        avg_entropy=avg,
        min_encoding_indices=indices,
    )

  def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
    """Indices ``[...]`` -> -1/+1 latents ``[..., K]``."""
    return indices_to_bits(indices, self.token_bits)
