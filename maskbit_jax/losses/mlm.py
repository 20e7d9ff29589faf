"""Masked-token (MLM) loss of the generator, a port of the reference ``MLMLoss``.

The generator predicts every split of every position; the loss is a label
smoothed cross entropy over all of them, and the masked-only loss and the
accuracies are extra numbers for logging.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(logits_xc: jax.Array, targets_x: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-entry cross entropy ``[...]`` of logits ``[..., C]`` with label smoothing.

  Matches ``torch.nn.functional.cross_entropy(label_smoothing=eps)`` before its
  reduction: ``(1 - eps) * nll + eps * mean_c(-log p_c)``.
  """
  logp = jax.nn.log_softmax(logits_xc.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets_x[..., None].astype(jnp.int32), axis=-1)[..., 0]
  smooth = -jnp.mean(logp, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * smooth


def mlm_loss(
    logits_bnmc: jax.Array,
    targets_bnm: jax.Array,
    mask_bnm: jax.Array,
    *,
    label_smoothing: float = 0.1,
    sum_splits: bool = False,
) -> dict[str, jax.Array]:
  """The reference ``MLMLoss`` on logits ``[B, N, M, C]``, targets and mask ``[B, N, M]``.

  Returns float32 scalars:
    ``mlm_loss``: smoothed cross entropy averaged over ALL positions and splits
      (masked or not, as in the reference); the only term with a gradient.
    ``masked_token_loss``: the same, averaged over the masked entries only.
    ``correct_tokens``: ``mean(argmax == target) ** M``, the mean taken over
      all ``B * N * M`` entries at once and then raised to the power M (a rough
      "all splits right" rate; not the product of per-split accuracies).
    ``masked_correct_tokens``: the same over the masked entries only.
  With ``sum_splits`` the two losses (not the accuracies) are multiplied by M.

  The reference computes everything but ``mlm_loss`` on detached logits, so those
  three carry no gradient here either. With no masked entry the reference gets
  NaN (mean of an empty tensor) for both masked values; here both are 0, so the
  logged metrics stay finite.
  """
  m = logits_bnmc.shape[2]
  per_entry = smoothed_cross_entropy(logits_bnmc, targets_bnm, label_smoothing)
  loss = jnp.mean(per_entry)

  detached = jax.lax.stop_gradient(logits_bnmc)
  per_entry_sg = jax.lax.stop_gradient(per_entry)
  mask = mask_bnm.astype(bool)
  # max(count, 1): an empty mask gives 0 / 1 = 0 instead of the reference's NaN.
  count = jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)
  masked_loss = jnp.sum(jnp.where(mask, per_entry_sg, 0.0)) / count

  correct = (jnp.argmax(detached, axis=-1) == targets_bnm).astype(jnp.float32)
  correct_tokens = jnp.mean(correct) ** m
  masked_correct_tokens = (jnp.sum(jnp.where(mask, correct, 0.0)) / count) ** m

  if sum_splits:
    loss = loss * m
    masked_loss = masked_loss * m

  return {
      "mlm_loss": loss,
      "correct_tokens": correct_tokens,
      "masked_token_loss": masked_loss,
      "masked_correct_tokens": masked_correct_tokens,
  }
