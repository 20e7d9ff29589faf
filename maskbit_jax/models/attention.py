"""Scaled dot-product attention: the one function every transformer here calls.

``softmax(q k^T * scale + mask) v`` per head on ``[B, T, H, hd]`` queries and
``[B, S, H, hd]`` keys / values (``jax.nn.dot_product_attention``'s layout).
The numerics are those of a fused attention kernel, and of the references'
float32 softmax under bf16 autocast: the scores accumulate in float32 (for bf16
inputs too), are scaled in float32, masked, soft-maxed in float32, and the
weights are cast back to the inputs' dtype for the product with ``v``.

Without an explicit matmul ``precision`` and without ``weights_fn`` this is
``jax.nn.dot_product_attention`` itself (``implementation`` passes through:
None lets JAX choose, "cudnn" asks for the fused GPU kernel). With either,
the same computation is written out (``jax.nn.dot_product_attention`` takes
no precision, and attention dropout acts on the weights).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# What a masked score becomes (jax.nn.dot_product_attention's value): exp underflows to exactly 0.
MASKED_SCORE = np.float32(-0.7 * np.finfo(np.float32).max)


def dot_product_attention(q_bthd: jax.Array, k_bshd: jax.Array, v_bshd: jax.Array, *, mask: jax.Array | None = None,
                          scale: float | None = None, precision: Any = None,
                          weights_fn: Callable[[jax.Array], jax.Array] | None = None,
                          implementation: str | None = None) -> jax.Array:
  """``[B, T, H, hd]`` attention output in the inputs' dtype.

  ``mask``: bool, broadcastable to ``[B, H, T, S]`` (True = visible); every
  query must see at least one key. ``scale`` defaults to ``hd^-0.5``.
  ``weights_fn`` maps the ``[B, H, T, S]`` weights (attention dropout).
  """
  if not q_bthd.dtype == k_bshd.dtype == v_bshd.dtype:
    raise ValueError(f"attention inputs need one dtype, got q {q_bthd.dtype}, k {k_bshd.dtype}, v {v_bshd.dtype}")
  hd = q_bthd.shape[-1]
  scale = hd ** -0.5 if scale is None else scale
  if precision is None and weights_fn is None:
    return jax.nn.dot_product_attention(q_bthd, k_bshd, v_bshd, mask=mask, scale=scale,
                                        implementation=implementation)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q_bthd, k_bshd, precision=precision, preferred_element_type=jnp.float32)
  scores = scores * jnp.float32(scale)
  if mask is not None:
    scores = jnp.where(mask, scores, MASKED_SCORE)
  weights = jax.nn.softmax(scores, axis=-1).astype(v_bshd.dtype)
  if weights_fn is not None:
    weights = weights_fn(weights)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v_bshd, precision=precision)
