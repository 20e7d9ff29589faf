"""The initial distributions of the trainable models, as the PyTorch references start them.

One home for every initialiser a trained model relies on, so a recipe run
starts from the reference's distributions:

* ``torch_kernel``: ``nn.Conv2d`` / ``nn.Linear`` default weights,
  ``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in =
  in_channels * kh * kw (flax kernels ``[kh, kw, in, out]`` / ``[in, out]``);
* ``torch_bias(fan_in)``: their default biases, U(-1/sqrt(fan_in), 1/sqrt(fan_in));
* ``mha_in_proj_kernel`` / ``zeros``: ``nn.MultiheadAttention``'s own reset,
  ``xavier_uniform_`` on the packed ``in_proj_weight`` ``[3E, E]`` (U(+-sqrt(6 / 4E)))
  and zeros on ``in_proj_bias``;
* ``trunc_normal_02``: the ``trunc_normal_(std=0.02)`` re-initialisation of the
  MaskBit generator and BAR; torch truncates at +-2 absolute, i.e. +-100 std,
  so it is a plain normal;
* ``ones`` / ``zeros``: norms' scales and shifts, and zero-initialised layers.

Which model uses which: the VQGAN+ tokenizer and discriminator keep torch's
defaults (the reference re-initialises neither); the MaskBit generator re-inits
every Linear and Embedding with ``trunc_normal_02`` (zero biases), except the
attention in-projection, a parameter of ``nn.MultiheadAttention`` rather than a
Linear, which keeps xavier_uniform; BAR re-inits everything with
``trunc_normal_02`` and zeroes its adaLN output layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

# kaiming_uniform_(a=sqrt(5)): gain^2 = 2 / (1 + 5) = 1/3, bound = sqrt(3) * gain / sqrt(fan_in) = 1 / sqrt(fan_in).
torch_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
mha_in_proj_kernel = nn.initializers.xavier_uniform()
trunc_normal_02 = nn.initializers.normal(0.02)
zeros = nn.initializers.zeros_init()
ones = nn.initializers.ones_init()


def uniform(bound: float):
  """U(-bound, bound)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def torch_bias(fan_in: int):
  """A ``nn.Conv2d`` / ``nn.Linear`` default bias for ``fan_in`` inputs per output (0 when fan_in is 0)."""
  return uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
