"""Training-time token masking of the generator (the reference ``get_mask_tokens``).

Each image draws one ratio from its schedule; then every (position, split)
entry is masked independently with that probability, so the number of masked
entries per image is random, not fixed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

TRAIN_MASK_MODES = ("linear", "square", "cosine", "arccos")


def train_mask_ratio(r: jax.Array, mode: str = "arccos") -> jax.Array:
  """Fraction of entries to mask for a uniform draw ``r`` in [0, 1) (float32, any shape).

  Unlike the sampling schedule this one is not clamped and has no ``root`` mode,
  as in the reference training code.
  """
  r = jnp.asarray(r, jnp.float32)
  if mode == "linear":
    return 1.0 - r
  if mode == "square":
    return 1.0 - r**2
  if mode == "cosine":
    return jnp.cos(r * (math.pi * 0.5))
  if mode == "arccos":
    return jnp.arccos(r) / (math.pi * 0.5)
  raise ValueError(f"unknown masking mode {mode!r}; choose one of {TRAIN_MASK_MODES}")


def mask_tokens(
    tokens_bnm: jax.Array,
    mask_token: int,
    key: jax.Array | None,
    *,
    mode: str = "arccos",
    min_masking_ratio: float = 0.0,
    uniform_r: jax.Array | None = None,
    uniform_tokens: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Masks tokens ``[B, N, M]`` -> (``masked_tokens`` ``[B, N, M]``, bool ``mask`` ``[B, N, M]``).

  ``r ~ U[0, 1)`` per image, scaled by ``1 - min_masking_ratio`` (so the ratio
  never falls below the schedule's value at that point), ratio =
  ``train_mask_ratio(r, mode)``, and entry (b, n, m) is masked when its own
  ``u ~ U[0, 1)`` is below image b's ratio; masked entries become ``mask_token``.

  ``uniform_r [B]`` / ``uniform_tokens [B, N, M]`` replace the two random draws
  (the golden fixtures store the reference's draws); ``key`` may be None only
  when both are given.
  """
  if mode not in TRAIN_MASK_MODES:
    raise ValueError(f"unknown masking mode {mode!r}; choose one of {TRAIN_MASK_MODES}")
  batch = tokens_bnm.shape[0]
  if uniform_r is None or uniform_tokens is None:
    if key is None:
      raise ValueError("mask_tokens needs a key unless uniform_r and uniform_tokens are both given")
    key_r, key_u = jax.random.split(key)
    if uniform_r is None:
      uniform_r = jax.random.uniform(key_r, (batch,), jnp.float32)
    if uniform_tokens is None:
      uniform_tokens = jax.random.uniform(key_u, tokens_bnm.shape, jnp.float32)
  r_b = jnp.asarray(uniform_r, jnp.float32) * (1.0 - min_masking_ratio)
  ratio_b = train_mask_ratio(r_b, mode)
  mask = jnp.asarray(uniform_tokens, jnp.float32) < ratio_b[:, None, None]
  masked = jnp.where(mask, jnp.asarray(mask_token, tokens_bnm.dtype), tokens_bnm)
  return masked, mask
