"""MBM bit masking of BAR's head (reference ``MaskBitModelingHead.masking_input_tokens``).

The training-time input corruption of the masked-bit-modelling head; pure and
jit-able, taking a PRNG key or the reference's raw draws instead of it (the
golden fixtures store those), so a recorded reference step reproduces exactly.
For N rows of k bits (in BAR one row per AR step per image, rows in generation
order: row ``b * steps + i`` is step i of image b):

  n ~ N(0, 1) [N], then u ~ U[0, 1) [N, k]     (drawn in this order)
  t     = sigmoid(0.8 n)                        logit-normal, std 0.8
  ratio = clip(1 - t, 1/k, 1)                   handed to the head's time embedding
  m     = max(round_half_even(k * ratio), 1)    bits to mask per row
  mask  = argsort(u) < m                        position j masked iff argsort(u)[j] < m

The last line is the reference's rule, NOT "the m smallest u" (that would be
``argsort(argsort(u)) < m``): still exactly m uniformly random bits per row,
but a different set for the same u.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_ID = 2  # target_codebook_size: bits are 0 / 1, the MASK id is 2
LOGIT_NORMAL_STD = 0.8


def mbm_timesteps(normal_draw: jax.Array) -> jax.Array:
  """``sigmoid(0.8 n + 0)`` in float32 (the reference ``_sample_timesteps`` after its ``randn``)."""
  n = jnp.asarray(normal_draw, jnp.float32)
  return jax.nn.sigmoid(n * jnp.float32(LOGIT_NORMAL_STD) + jnp.float32(0.0))


def mbm_mask_ratio(timesteps: jax.Array, num_bits: int) -> jax.Array:
  """``clip(1 - t, 1/k, 1)`` in float32: the ratio the head's time embedding receives."""
  t = jnp.asarray(timesteps, jnp.float32)
  return jnp.clip(jnp.float32(1.0) - t, jnp.float32(1.0 / num_bits), jnp.float32(1.0))


def mbm_num_masked(mask_ratio: jax.Array, num_bits: int) -> jax.Array:
  """``max(round_half_even(k * ratio), 1)`` as int32."""
  m = jnp.round(jnp.float32(num_bits) * jnp.asarray(mask_ratio, jnp.float32))
  return jnp.maximum(m, 1.0).astype(jnp.int32)


def mbm_mask_from_uniform(uniform_nk: jax.Array, num_masked_n: jax.Array) -> jax.Array:
  """The reference rule ``argsort(u, -1) < m`` -> bool mask ``[N, k]`` (exactly m True per row)."""
  order = jnp.argsort(jnp.asarray(uniform_nk, jnp.float32), axis=-1)
  return order < jnp.asarray(num_masked_n)[..., None]


def draw_mbm_noise(key: jax.Array, num_rows: int, num_bits: int) -> tuple[jax.Array, jax.Array]:
  """The two draws of one masking: ``n`` ``[N]`` ~ N(0, 1) and ``u`` ``[N, k]`` ~ U[0, 1), float32."""
  key_n, key_u = jax.random.split(key)
  return (jax.random.normal(key_n, (num_rows,), jnp.float32),
          jax.random.uniform(key_u, (num_rows, num_bits), jnp.float32))


def mbm_masking(normal_draw: jax.Array, uniform: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The masking of N rows of k bits from its two draws ``n [N]`` and ``u [N, k]``.

  Returns ``(mask_ratio [N] float32, num_masked [N] int32, mask [N, k] bool)``;
  ``mask_ratio`` (not ``num_masked / k``) is what the MBM head's time embedding gets.
  """
  uniform = jnp.asarray(uniform, jnp.float32)
  k = uniform.shape[-1]
  ratio = mbm_mask_ratio(mbm_timesteps(normal_draw), k)
  num_masked = mbm_num_masked(ratio, k)
  return ratio, num_masked, mbm_mask_from_uniform(uniform, num_masked)


def draw_mbm_masking(key: jax.Array, num_rows: int, num_bits: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``mbm_masking`` with fresh draws from ``key`` (``draw_mbm_noise``)."""
  return mbm_masking(*draw_mbm_noise(key, num_rows, num_bits))


def mbm_mask_bits(bits: jax.Array, key: jax.Array | None = None, *, mask_id: int = MASK_ID,
                  normal_draw: jax.Array | None = None,
                  uniform: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Masks the bits of every row: ``bits [..., k]`` -> (``masked_bits``, bool ``mask``, ``mask_ratio [...]``).

  Leading dimensions are flattened row-major into the N rows the draws cover
  (``[B, steps, k]`` gives row ``b * steps + i``). ``normal_draw [N]`` and
  ``uniform [N, k]`` replace the random draws (both or neither); ``key`` may be
  None only when both are given. ``masked_bits`` has ``mask_id`` where masked
  and the input's dtype; ``mask_ratio`` (float32) is the value to hand to the
  MBM head.
  """
  bits = jnp.asarray(bits)
  lead, k = bits.shape[:-1], bits.shape[-1]
  rows = bits.reshape(-1, k)
  n_rows = rows.shape[0]
  if (normal_draw is None) != (uniform is None):
    raise ValueError("pass both normal_draw and uniform, or neither")
  if normal_draw is None:
    if key is None:
      raise ValueError("mbm_mask_bits needs a PRNG key when the draws are not given")
    normal_draw, uniform = draw_mbm_noise(key, n_rows, k)
  ratio, _, mask = mbm_masking(jnp.asarray(normal_draw, jnp.float32).reshape(n_rows),
                               jnp.asarray(uniform, jnp.float32).reshape(n_rows, k))
  masked = jnp.where(mask, jnp.asarray(mask_id, rows.dtype), rows)
  return masked.reshape(bits.shape), mask.reshape(bits.shape), ratio.reshape(lead)
