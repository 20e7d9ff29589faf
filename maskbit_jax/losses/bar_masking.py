"""Training-time randomness of BAR: label dropout and RAR order annealing (and the MBM bit masking).

All functions are pure and jit-able. Each takes a PRNG key, or the reference's
raw draws instead of it (the golden fixtures store those), so the same code
reproduces a recorded reference step exactly.

**MBM bit masking** lives with the head it corrupts the input of (``models.mbm_masking``) and
is re-exported here.

**Label dropout** (``BAR.preprocess_condition``): ids are ``label + k_vocab + 1``
(``k_vocab`` = ``target_codebook_size`` = 2: 0/1 are bits, 2 is MASK), and a
row whose ``u ~ U[0, 1)`` is below ``p`` gets the null id
``num_classes + k_vocab + 1``.

**RAR order annealing** (``generator_train_one_epoch.get_rar_random_ratio`` and
``BAR.sample_orders``): the probability of a random generation order is 1 before
``anneal_start``, falls linearly to 0 at ``anneal_end`` and stays 0; each image
takes ``argsort(U[0,1)^L)`` (a uniform permutation) when its own ``U[0, 1)`` draw
is below that probability, else raster order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The MBM masking is the model's (the reference head's masking_input_tokens); re-exported for the losses' users.
from maskbit_jax.models.mbm_masking import (LOGIT_NORMAL_STD, MASK_ID, draw_mbm_masking, draw_mbm_noise,  # noqa: F401
                                            mbm_mask_bits, mbm_mask_from_uniform, mbm_mask_ratio, mbm_masking,
                                            mbm_num_masked, mbm_timesteps)


# ---------------------------------------------------------------------------
# Label dropout


def condition_ids(labels: jax.Array, *, target_codebook_size: int = 2) -> jax.Array:
  """Class labels -> the generator's condition ids (``label + target_codebook_size + 1``), int32."""
  return jnp.asarray(labels).astype(jnp.int32) + jnp.int32(target_codebook_size + 1)


def null_condition_id(num_classes: int, *, target_codebook_size: int = 2) -> int:
  """The unconditional id ``num_classes + target_codebook_size + 1`` (the last embedding row)."""
  return int(num_classes) + int(target_codebook_size) + 1


def drop_labels(labels: jax.Array, key: jax.Array | None = None, *, drop_prob: float, num_classes: int,
                target_codebook_size: int = 2, uniform: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Label dropout of ``preprocess_condition``: -> (condition ids int32 ``[B]``, bool ``dropped [B]``).

  ``uniform [B]`` (float32 ``U[0, 1)``) replaces the draw; a row is dropped when
  ``u < drop_prob``.
  """
  labels = jnp.asarray(labels)
  if uniform is None:
    if key is None:
      raise ValueError("drop_labels needs a PRNG key when the draw is not given")
    uniform = jax.random.uniform(key, labels.shape, jnp.float32)
  dropped = jnp.asarray(uniform, jnp.float32) < jnp.float32(drop_prob)
  ids = condition_ids(labels, target_codebook_size=target_codebook_size)
  null = null_condition_id(num_classes, target_codebook_size=target_codebook_size)
  return jnp.where(dropped, jnp.int32(null), ids), dropped


# ---------------------------------------------------------------------------
# RAR generation-order annealing


def rar_random_ratio(step, anneal_start: int, anneal_end: int) -> jax.Array:
  """Probability of a random order at optimizer step ``step`` (float32; traceable).

  1 before ``anneal_start``, ``1 - (step - start) / (end - start)`` up to
  ``anneal_end``, 0 after. ``start = end = -1`` (the reference's raster
  setting) gives 0 at every step.
  """
  s = jnp.asarray(step).astype(jnp.float32)
  start, end = float(anneal_start), float(anneal_end)
  if end <= start:
    return jnp.where(s < start, jnp.float32(1.0), jnp.float32(0.0))
  ramp = jnp.float32(1.0) - (s - jnp.float32(start)) / jnp.float32(end - start)
  return jnp.where(s < start, jnp.float32(1.0), jnp.where(s > end, jnp.float32(0.0), ramp))


def sample_orders(key: jax.Array | None, batch_size: int, seq_len: int, random_ratio, *,
                  order_uniform: jax.Array | None = None,
                  choice_uniform: jax.Array | None = None) -> jax.Array:
  """Per-image generation orders ``[B, L]`` int32: a uniform permutation with probability ``random_ratio``,
  raster order otherwise (``BAR.sample_orders``).

  Draws (reference order): ``order_uniform [B, L]`` whose argsort is the
  permutation, then ``choice_uniform [B]``; a row is random when its draw is
  below ``random_ratio``. Both are drawn for every row at every ratio, as in
  the reference, so the step has one shape whatever the ratio.
  """
  if (order_uniform is None) != (choice_uniform is None):
    raise ValueError("pass both order_uniform and choice_uniform, or neither")
  if order_uniform is None:
    if key is None:
      raise ValueError("sample_orders needs a PRNG key when the draws are not given")
    key_o, key_c = jax.random.split(key)
    order_uniform = jax.random.uniform(key_o, (batch_size, seq_len), jnp.float32)
    choice_uniform = jax.random.uniform(key_c, (batch_size,), jnp.float32)
  random_orders = jnp.argsort(jnp.asarray(order_uniform, jnp.float32), axis=-1).astype(jnp.int32)
  raster = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch_size, seq_len))
  use_random = jnp.asarray(choice_uniform, jnp.float32).reshape(batch_size, 1) < jnp.asarray(random_ratio, jnp.float32)
  return jnp.where(use_random, random_orders, raster)
