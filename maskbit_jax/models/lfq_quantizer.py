"""Lookup-free quantization (LFQ): each latent channel becomes one bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.bits import MAX_TOKEN_BITS, bits_to_indices, indices_to_bits
from maskbit_jax.bits import codebook as lfq_codebook
from maskbit_jax.models.entropy import grouped_terms, lfq_entropy_terms

# bits_to_indices / indices_to_bits / lfq_codebook stay importable from here (maskbit_jax re-exports them).
__all__ = ["MAX_TOKEN_BITS", "LookupFreeQuantizer", "bits_to_indices", "indices_to_bits", "lfq_codebook"]

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
