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
      position is one sample, all of them averaged together (see
      :func:`grouped_terms` for the reference's per-device average).
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


# Above this many affinity entries ([rows, codes]) the LFQ entropy is computed in row chunks.
CHUNK_ENTRIES = 1 << 24


def _chunk_stats(z_ck: jax.Array, valid_c: jax.Array, codebook_nk: jax.Array, temperature: float):
  """Sum of per-row entropies and of probabilities over one chunk of rows (invalid rows weigh 0)."""
  affinity = 2.0 * jnp.einsum("ck,nk->cn", z_ck, codebook_nk, precision=jax.lax.Precision.HIGHEST)
  probs = jax.nn.softmax(affinity / temperature, axis=-1) * valid_c[:, None]
  return -jnp.sum(probs * clamp_log(probs)), jnp.sum(probs, axis=0)


def lfq_entropy_terms(z_xk: jax.Array, codebook_nk: jax.Array, temperature: float, gamma: float = 1.0, *,
                      chunk_entries: int = CHUNK_ENTRIES) -> tuple[jax.Array, jax.Array]:
  """:func:`entropy_terms` of the LFQ affinities ``2 z . c`` without materialising ``[rows, codes]``.

  The reference builds the whole ``[B*h*w, 2^K]`` softmax: 4 GiB per copy for
  16 images of 256 tokens at 18 bits, several copies with the gradient. Here
  the rows are processed in chunks of at most ``chunk_entries`` affinities
  inside a ``lax.scan`` whose body is rematerialised, so forward and backward
  hold one chunk at a time; the values are the same sums (to float rounding).
  Chunk ``i`` takes rows ``i, i + n, i + 2n, ...`` so a batch-sharded row axis
  stays sharded inside every chunk. Small problems take the direct path.
  """
  z = z_xk.reshape(-1, z_xk.shape[-1]).astype(jnp.float32)
  rows, codes = z.shape[0], codebook_nk.shape[0]
  if rows * codes <= chunk_entries:
    affinity = 2.0 * jnp.einsum("xk,nk->xn", z, codebook_nk, precision=jax.lax.Precision.HIGHEST)
    return entropy_terms(affinity, temperature, gamma)
  per_chunk = max(1, chunk_entries // codes)
  num_chunks = -(-rows // per_chunk)
  padded = num_chunks * per_chunk
  valid = (jnp.arange(padded) < rows).astype(jnp.float32)
  z = jnp.pad(z, ((0, padded - rows), (0, 0)))
  # [per_chunk, num_chunks, K] -> scan over num_chunks: chunk i holds rows i, i + num_chunks, ...
  z_chunks = jnp.moveaxis(z.reshape(per_chunk, num_chunks, -1), 1, 0)
  valid_chunks = valid.reshape(per_chunk, num_chunks).T
  stats = jax.checkpoint(lambda zc, vc: _chunk_stats(zc, vc, codebook_nk, temperature))

  def body(carry, xs):
    ent, psum = carry
    e, p = stats(*xs)
    return (ent + e, psum + p), None

  init = (jnp.zeros((), jnp.float32), jnp.zeros((codes,), jnp.float32))
  (ent_sum, prob_sum), _ = jax.lax.scan(body, init, (z_chunks, valid_chunks))
  avg_probs = prob_sum / rows
  per_sample = ent_sum / rows
  avg = -jnp.sum(avg_probs * clamp_log(avg_probs))
  return per_sample, avg * gamma


def grouped_terms(terms_fn, x_b: jax.Array, groups: int = 1) -> tuple[jax.Array, jax.Array]:
  """Mean over ``groups`` equal contiguous slices of the batch axis of ``terms_fn(slice)``.

  The reference computes the entropy terms on each GPU's own images and DDP
  averages the gradients, i.e. it minimises the mean over devices of each
  device's loss; ``groups`` slices of ``x_b [B, ...]`` (B/groups images each,
  in batch order, so a group is one device's shard when the batch is laid out
  that way) reproduce that. ``groups=1`` is the whole batch. ``terms_fn``
  returns ``(per_sample_entropy, avg_entropy)``.
  """
  if groups == 1:
    return terms_fn(x_b)
  b = x_b.shape[0]
  if groups < 1 or b % groups:
    raise ValueError(f"the entropy of a batch of {b} cannot be taken over {groups} equal groups")
  per_sample, avg = jax.vmap(terms_fn)(x_b.reshape(groups, b // groups, *x_b.shape[1:]))
  return jnp.mean(per_sample), jnp.mean(avg)
