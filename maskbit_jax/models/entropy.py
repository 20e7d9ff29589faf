"""The codebook entropy terms shared by both quantizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOG_CLAMP = 1e-5


def clamp_log(p: jax.Array, eps: float = LOG_CLAMP) -> jax.Array:
  return jnp.log(jnp.maximum(p, eps))


def entropy_terms(affinity_xn: jax.Array, temperature: float, gamma: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Per-sample and batch-average entropy of ``softmax(affinity / temperature)``.

  Args:
    affinity_xn: ``[..., num_codes]`` logits (higher = closer); every leading
      position is one sample. Under a sharded batch the average runs over the
      global batch, as in single-device reference training.
  Returns:
    ``(per_sample_entropy, gamma * avg_entropy)``, both float32 scalars; the
    log is clamped at 1e-5 as in the reference.
  """
  flat = affinity_xn.reshape(-1, affinity_xn.shape[-1]).astype(jnp.float32) / temperature
  probs = jax.nn.softmax(flat, axis=-1)
  avg_probs = jnp.mean(probs, axis=0)
  per_sample = -jnp.mean(jnp.sum(probs * clamp_log(probs), axis=-1))
  avg = -jnp.sum(avg_probs * clamp_log(avg_probs))
  return per_sample, avg * gamma
