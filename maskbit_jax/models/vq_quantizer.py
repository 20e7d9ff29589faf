"""Vector quantization with a learned codebook (VQGAN+ ``lookup``, MaskGIT, Taming)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import initializers
from maskbit_jax.models.entropy import entropy_terms, grouped_terms

_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``torch.nn.functional.normalize(x, dim=-1)``: x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class VectorQuantizer(nn.Module):
  """``z [B, h, w, D]`` -> (nearest codebook rows with straight-through gradient, results).

  Nearest code by squared euclidean distance ``|z|^2 + |e|^2 - 2 z.e`` (first
  index on ties). With ``use_l2_normalisation`` both z and the codebook are
  l2-normalised first. Results as for LFQ plus ``codebook_loss``.
  """

  codebook_size: int
  token_size: int
  commitment_cost: float = 0.25
  entropy_loss_weight: float = 0.0
  entropy_loss_temperature: float = 0.01
  entropy_gamma: float = 1.0
  use_l2_normalisation: bool = False
  entropy_groups: int = 1  # the entropy over this many equal slices of the batch (entropy.grouped_terms)
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    init = initializers.uniform(1.0 / self.codebook_size)  # the reference's explicit uniform_(-1/n, 1/n)
    self.embedding = nn.Embed(
        self.codebook_size,
        self.token_size,
        param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(init, ("codebook", "code_dim")),
    )

  def _codebook(self) -> jax.Array:
    table = self.embedding.embedding.astype(jnp.float32)
    return l2_normalize(table) if self.use_l2_normalisation else table

  def __call__(self, z_bhwd: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    z = z_bhwd.astype(jnp.float32)
    if self.use_l2_normalisation:
      z = l2_normalize(z)
    codebook = self._codebook()
    dist = (jnp.sum(jnp.square(z), axis=-1, keepdims=True) + jnp.sum(jnp.square(codebook), axis=-1)
            - 2.0 * jnp.einsum("bhwd,nd->bhwn", z, codebook, precision=_HIGHEST))
    indices = jnp.argmin(dist, axis=-1).astype(jnp.int32)
    z_q = self.get_codebook_entry(indices)
    commitment = self.commitment_cost * jnp.mean(jnp.square(jax.lax.stop_gradient(z_q) - z))
    codebook_loss = jnp.mean(jnp.square(z_q - jax.lax.stop_gradient(z)))
    zero = jnp.zeros((), jnp.float32)
    entropy_loss, per_sample, avg = zero, zero, zero
    if train and self.entropy_loss_weight != 0.0:
      per_sample, avg = grouped_terms(
          lambda d: entropy_terms(-d, self.entropy_loss_temperature, self.entropy_gamma), dist, self.entropy_groups)
      entropy_loss = self.entropy_loss_weight * (per_sample - avg)
    z_q_st = z + jax.lax.stop_gradient(z_q - z)
    return z_q_st, dict(
        quantizer_loss=commitment + codebook_loss + entropy_loss,
        commitment_loss=commitment,
        codebook_loss=codebook_loss,
        entropy_loss=entropy_loss,
        per_sample_entropy=per_sample,
        avg_entropy=avg,
        min_encoding_indices=indices,
    )

  def get_codebook_entry(self, indices: jax.Array) -> jax.Array:
    """Indices ``[...]`` -> codebook rows ``[..., D]`` (l2-normalised if configured)."""
    return jnp.take(self._codebook(), indices, axis=0)
