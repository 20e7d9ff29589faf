"""Small building blocks shared by the convolutional tokenizers.

Parameters are created with logical axis names (see ``maskbit_jax.sharding``).
Convolution kernels are ``[kh, kw, in, out]``; the converter transposes the
PyTorch ``[out, in, kh, kw]`` layout.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
KERNEL_AXES = ("kernel_height", "kernel_width", "conv_in", "conv_out")


def conv(
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    use_bias: bool = True,
    padding: Any = "SAME",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    precision: Any = None,
    name: str | None = None,
) -> nn.Conv:
  """A 2D convolution with logical axis names on its kernel and bias.

  ``padding="SAME"`` is TF-style: for a stride-2 conv on an even size it pads
  0 before and 1 after, exactly like the reference ``Conv2dSame``.
  """
  return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(strides, strides),
      padding=padding,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_AXES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
      name=name,
  )


def group_norm(
    epsilon: float,
    *,
    num_groups: int = 32,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.GroupNorm:
  """GroupNorm over NHWC channels, statistics in float32 like ``torch.nn.GroupNorm``.

  ``use_fast_variance=False``: E[(x - mean)^2], not E[x^2] - mean^2, which loses
  digits on feature maps with a large mean and breaks 1e-5 parity.
  """
  return nn.GroupNorm(
      num_groups=num_groups,
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
      name=name,
  )


def check_group_norm_channels(channels: int, num_groups: int = 32) -> None:
  if channels % num_groups:
    raise ValueError(f"GroupNorm with {num_groups} groups needs a channel count divisible by {num_groups}, got {channels}")


def upsample_nearest_2x(x_bhwc: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 up-sampling (``F.interpolate(scale_factor=2, mode='nearest')``)."""
  return jnp.repeat(jnp.repeat(x_bhwc, 2, axis=1), 2, axis=2)


def avg_pool_2x(x_bhwc: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2, odd trailing rows/cols dropped (``F.avg_pool2d``)."""
  return nn.avg_pool(x_bhwc, (2, 2), strides=(2, 2), padding="VALID")


def init_params(module: nn.Module, rng: jax.Array, *example_args):
  """``module.init(rng, *example_args)["params"]`` compiled, with only the params as output.

  XLA then drops the forward pass that eager ``init`` would run op by op (or a
  plain ``jit(module.init)`` would compile in full).
  """
  return jit_init(lambda r, *a: module.init(r, *a)["params"])(rng, *example_args)


# Parameter initialisers (hundreds of small RNG fusions) run once; LLVM's optimisation of them costs
# XLA:CPU ~25 s for the tiny tokenizer and buys nothing, so init programs compile at level 0 (~5 s).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def jit_init(fn, **jit_kwargs):
  """``jax.jit(fn)`` for one-off initialisation programs: compiled without backend optimisation."""
  jitted = jax.jit(fn, **jit_kwargs)

  def call(*args):
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
      return jitted(*args)  # inside another program: it is compiled (and optimised) with that one
    return jitted.lower(*args).compile(compiler_options=INIT_COMPILER_OPTIONS)(*args)

  return call
