"""Small building blocks shared by every model: Linear, Embedding, LayerNorm, RMSNorm, GroupNorm, Conv.

Parameters are created with logical axis names (see ``maskbit_jax.sharding``)
and the initialisers of ``models.initializers``. Dense kernels are
``[in, out]``, convolution kernels ``[kh, kw, in, out]``; the converter
transposes the PyTorch ``[out, in]`` / ``[out, in, kh, kw]`` layouts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import initializers

Dtype = Any
KERNEL_AXES = ("kernel_height", "kernel_width", "conv_in", "conv_out")


def dense(features: int, axes: tuple[Any, Any], name: str | None = None, *, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, precision: Any = None, use_bias: bool = True,
          kernel_init: Any = initializers.trunc_normal_02, bias_init: Any = initializers.zeros,
          zero_init: bool = False) -> nn.Dense:
  """A Linear with logical axis names on kernel ``[in, out]`` and bias ``[out]`` (zeros unless ``bias_init``).

  The kernel starts at ``trunc_normal_(0.02)`` (the transformers' re-init) unless
  ``kernel_init`` says otherwise; ``zero_init`` for the adaLN-Zero output layers.
  """
  kernel_init = initializers.zeros if zero_init else kernel_init
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
                  name=name, kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(bias_init, (axes[1],)))


def embed(rows: int, features: int, axes: tuple[Any, Any], name: str | None = None, *, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, embedding_init: Any = initializers.trunc_normal_02) -> nn.Embed:
  """An Embedding table ``[rows, features]`` with logical axis names."""
  return nn.Embed(rows, features, dtype=dtype, param_dtype=param_dtype, name=name,
                  embedding_init=nn.with_logical_partitioning(embedding_init, axes))


def layer_norm(epsilon: float, name: str | None = None, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """``torch.nn.LayerNorm`` over the last axis with logical axis names.

  ``use_fast_variance=False``: the two-pass variance E[(x - mean)^2] of torch.
  """
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, name=name,
                      scale_init=nn.with_logical_partitioning(initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(initializers.zeros, ("norm",)))


RMS_NORM_EPS = 1e-6


class RMSNorm(nn.Module):
  """``x * rsqrt(mean(x^2) + eps) * weight`` over the last axis, always computed in float32.

  Returns the input's dtype (a float32 residual stream stays float32 under a bf16 compute dtype).
  """

  eps: float = RMS_NORM_EPS
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


class Conv(nn.Module):
  """``nn.Conv`` started as ``torch.nn.Conv2d``: kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  The bias bound needs the input channels, known only at the call, so the
  ``nn.Conv`` is made there and shares this module's scope: the parameters are
  ``<name>/kernel`` and ``<name>/bias``, as with a bare ``nn.Conv``.
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    fan_in = x_bhwc.shape[-1] * self.kernel_size * self.kernel_size
    conv = nn.Conv(
        self.features,
        (self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides),
        padding=self.padding,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        precision=self.precision,
        kernel_init=nn.with_logical_partitioning(initializers.torch_kernel, KERNEL_AXES),
        bias_init=nn.with_logical_partitioning(initializers.torch_bias(fan_in), ("conv_out",)),
    )
    nn.share_scope(self, conv)
    return conv(x_bhwc)


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
) -> Conv:
  """A 2D convolution with logical axis names on its kernel and bias, torch's default init.

  ``padding="SAME"`` is TF-style: for a stride-2 conv on an even size it pads
  0 before and 1 after, exactly like the reference ``Conv2dSame``.
  """
  return Conv(features, kernel_size, strides=strides, padding=padding, use_bias=use_bias, dtype=dtype,
              param_dtype=param_dtype, precision=precision, name=name)


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
      scale_init=nn.with_logical_partitioning(initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(initializers.zeros, ("norm",)),
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
