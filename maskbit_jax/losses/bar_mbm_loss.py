"""The Masked Bit Modeling loss of BAR (reference ``MaskBitModelingHead.forward``).

Every bit of every row gets a 2-way cross-entropy; masked bits weigh 1.0 and
visible bits 0.1, and the weighted sum is divided by the sum of the weights over
the whole batch (+1e-8). All in float32. In BAR every AR step of every image is
one row, and this is the generator's only training loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED_WEIGHT = 1.0
VISIBLE_WEIGHT = 0.1
NORM_EPS = 1e-8


def mbm_per_bit_ce(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Cross-entropy per bit: ``logits [..., k, C]`` (float32), ``target [..., k]`` ints -> ``[..., k]``."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  target = jnp.asarray(target).astype(jnp.int32)
  return -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]


def mbm_loss_weights(mask: jax.Array, visible_weight: float = VISIBLE_WEIGHT) -> jax.Array:
  """``(1 - m) * visible_weight + m`` for the bool mask (True = masked), float32."""
  m = jnp.asarray(mask).astype(jnp.float32)
  return (1.0 - m) * jnp.float32(visible_weight) + m * jnp.float32(MASKED_WEIGHT)


def mbm_loss(logits: jax.Array, target: jax.Array, mask: jax.Array, *, visible_weight: float = VISIBLE_WEIGHT,
             return_aux: bool = False):
  """The MBM loss, a float32 scalar: ``sum(w * ce) / (sum(w) + 1e-8)`` over every bit of the batch.

  Args:
    logits: ``[..., k, 2]`` head outputs (class j of bit i at ``[..., i, j]``).
    target: ``[..., k]`` the clean bits.
    mask: ``[..., k]`` bool, True where the head's input was masked.
    return_aux: also return ``dict(per_bit_ce=..., loss_weights=...)``.
  """
  ce = mbm_per_bit_ce(logits, target)
  weights = mbm_loss_weights(mask, visible_weight)
  loss = jnp.sum(ce * weights) / (jnp.sum(weights) + jnp.float32(NORM_EPS))
  if return_aux:
    return loss, dict(per_bit_ce=ce, loss_weights=weights)
  return loss


def generator_mbm_loss(forward: dict, *, visible_weight: float = VISIBLE_WEIGHT) -> tuple[jax.Array, dict]:
  """A ``BarGenerator`` training forward's output -> ``(loss, aux)``: the forward's entries plus
  ``per_bit_ce`` and ``loss_weights``."""
  loss, terms = mbm_loss(forward["logits"], forward["target"], forward["masks"], visible_weight=visible_weight,
                         return_aux=True)
  return loss, dict(forward, **terms)
