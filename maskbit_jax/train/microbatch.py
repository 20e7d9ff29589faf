"""Gradient accumulation inside one jitted step: a ``lax.scan`` over micro-batches, mean gradient.

The reference (Accelerate) divides each micro-batch loss by ``k`` and steps
once per ``k`` micro-batches, i.e. the optimizer sees the mean gradient. Here
the global batch of one optimizer step arrives whole, is split into ``k``
micro-batches and scanned, so the step counter, schedules and EMA all count
optimizer steps. Micro-batch ``i`` takes rows ``i, i + k, i + 2k, ...`` so that
each device keeps its own rows (no resharding of the batch axis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def split(tree: Any, k: int) -> Any:
  """Leaves ``[B, ...]`` -> ``[k, B // k, ...]`` (row ``j * k + i`` goes to micro-batch ``i``)."""

  def one(x):
    if x.shape[0] % k:
      raise ValueError(f"batch of {x.shape[0]} does not split into {k} accumulation steps")
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

  return jax.tree.map(one, tree)


def mean_over_micro(fn: Callable[[Any], tuple[Any, Any]], micro: Any, k: int) -> tuple[Any, Any]:
  """``fn(micro_batch) -> (averaged, kept)`` over the ``k`` micro-batches of ``micro`` (from :func:`split`).

  Returns the mean of ``averaged`` (gradients, loss terms) and ``kept``
  stacked as ``[k, ...]`` (e.g. reconstructions reused later in the step).
  ``k == 1`` calls ``fn`` once (no scan), so a run without accumulation
  computes exactly the plain step.
  """
  if k == 1:
    averaged, kept = fn(jax.tree.map(lambda x: x[0], micro))
    return averaged, jax.tree.map(lambda x: x[None], kept)

  def body(acc, mb):
    averaged, kept = fn(mb)
    return jax.tree.map(jnp.add, acc, averaged), kept

  first, kept0 = fn(jax.tree.map(lambda x: x[0], micro))
  total, kept_rest = jax.lax.scan(body, first, jax.tree.map(lambda x: x[1:], micro))
  kept = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), kept0, kept_rest)
  return jax.tree.map(lambda x: x / k, total), kept


def mean_over_micro_with_carry(fn: Callable[[Any, Any], tuple[Any, Any]], carry: Any, micro: Any,
                               k: int) -> tuple[Any, Any]:
  """``fn(carry, micro_batch) -> (carry', averaged)`` over the ``k`` micro-batches of ``micro``, in order.

  For state that every forward moves (a spectral-norm power iteration per discriminator call): the
  carry goes from one micro-batch to the next, as it does over the reference's successive forwards.
  Returns the last carry and the mean of ``averaged``, summed in the scan's carry (no ``[k, ...]`` copy
  of the gradients). ``k == 1`` calls ``fn`` once.
  """
  if k == 1:
    return fn(carry, jax.tree.map(lambda x: x[0], micro))

  def body(acc, mb):
    state, total = acc
    state, averaged = fn(state, mb)
    return (state, jax.tree.map(jnp.add, total, averaged)), None

  carry, first = fn(carry, jax.tree.map(lambda x: x[0], micro))
  (carry, total), _ = jax.lax.scan(body, (carry, first), jax.tree.map(lambda x: x[1:], micro))
  return carry, jax.tree.map(lambda x: x / k, total)


def merge(tree: Any) -> Any:
  """Inverse of :func:`split`: ``[k, B // k, ...]`` -> ``[B, ...]`` in the original row order."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)
