"""The VQGAN+ patch discriminator (reference ``NLayerDiscriminatorv2``), NHWC.

Images ``[B, H, W, C]`` -> logits ``[B, 16, 16, 1]`` (float32) whatever H and W:

* ``block_in``: 5x5 conv (bias) -> LeakyReLU(0.1);
* ``num_stages`` blocks, stage i going from ``hidden * m_i`` to ``hidden * m_{i+1}``
  channels (``m = (1, 1, 2, 4, ...)``): 3x3 conv (bias) -> 2x down-sampling ->
  GroupNorm(32, eps 1e-5) -> LeakyReLU(0.1). The down-sampling is a fixed blur
  (depthwise stride-2 conv with a normalised binomial kernel) with
  ``blur_resample``, else 2x2 average pooling;
* an adaptive MAX pool to 16x16 (up-samples by replication when the map is smaller);
* ``to_logits``: 1x1 conv -> LeakyReLU(0.1) -> 5x5 conv to one channel.

Every conv, the blur included, pads TF-style "SAME" (extra pad after), like the
reference ``Conv2dSame`` and ``BlurBlock``. The blur kernels are buffers of the
PyTorch module (``blocks.i.1.kernel`` ``[1, 1, k, k]``); here they are derived
from the config, never learned, and the converter checks the stored ones
against :func:`blur_kernel`.

Intermediates are sown into ``intermediates``: ``block<i>`` (after each stage)
and ``pool`` (after the adaptive pool).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from maskbit_jax.models import layers

GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm's default; the tokenizer uses 1e-6
LEAKY_RELU_SLOPE = 0.1
POOL_SIZE = 16
INIT_IMAGE_SIZE = 32  # parameter shapes do not depend on the image size
NAME = "VQGAN+Discriminator"

# 1-d binomial taps per blur kernel size (reference BLUR_KERNEL_MAP).
BLUR_TAPS = {3: (1, 2, 1), 4: (1, 3, 3, 1), 5: (1, 4, 6, 4, 1)}

def blur_kernel(kernel_size: int) -> np.ndarray:
  """The ``[k, k]`` float32 blur kernel: outer product of the binomial taps over its sum."""
  if kernel_size not in BLUR_TAPS:
    raise ValueError(f"blur_kernel_size must be one of {sorted(BLUR_TAPS)}, got {kernel_size}")
  taps = np.asarray(BLUR_TAPS[kernel_size], dtype=np.float32)
  kernel = taps[None, :] * taps[:, None]
  return kernel / kernel.sum()


def blur_downsample_2x(x_bhwc: jax.Array, kernel_size: int = 4, precision: Any = None) -> jax.Array:
  """Depthwise stride-2 blur with "SAME" padding (reference ``BlurBlock``).

  Output size ``ceil(H / 2)``; the total padding
  ``max((ceil(H/2) - 1) * 2 + k - H, 0)`` is split ``total // 2`` before, the
  rest after (XLA's "SAME"). The kernel is the outer product of the binomial
  taps, so the blur is applied as two 1-D passes of strided slices: the same
  result as the reference's depthwise conv (to float rounding), and an order
  of magnitude faster than a grouped convolution and its gradient on CPU.
  ``precision`` is accepted for a uniform interface; no matmul is involved.
  """
  del precision
  if kernel_size not in BLUR_TAPS:
    raise ValueError(f"blur_kernel_size must be one of {sorted(BLUR_TAPS)}, got {kernel_size}")
  taps = np.asarray(BLUR_TAPS[kernel_size], np.float64)
  taps = (taps / taps.sum()).astype(np.float32)

  def blur_axis(x, axis):
    n = x.shape[axis]
    out = -(-n // 2)
    total = max((out - 1) * 2 + kernel_size - n, 0)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (total // 2, total - total // 2)
    x = jnp.pad(x, pad)
    stop = 2 * (out - 1) + 1
    return sum(jnp.asarray(taps[i], x.dtype) * jax.lax.slice_in_dim(x, i, i + stop, 2, axis)
               for i in range(kernel_size))

  return blur_axis(blur_axis(x_bhwc, 1), 2)


def _adaptive_windows(in_size: int, out_size: int) -> np.ndarray:
  """``[out, w]`` input indices of every adaptive-pool window (short windows repeat their last index).

  Window i covers ``[floor(i * in / out), ceil((i + 1) * in / out))``, as in
  ``torch.nn.AdaptiveMaxPool2d``; repeating an index does not change a max.
  """
  starts = [(i * in_size) // out_size for i in range(out_size)]
  ends = [-((-(i + 1) * in_size) // out_size) for i in range(out_size)]
  width = max(e - s for s, e in zip(starts, ends))
  return np.asarray([[min(s + j, e - 1) for j in range(width)] for s, e in zip(starts, ends)], dtype=np.int32)


def adaptive_max_pool(x_bhwc: jax.Array, output_size: int = POOL_SIZE) -> jax.Array:
  """Adaptive max pool ``[B, H, W, C] -> [B, out, out, C]`` for any H, W (smaller than out included)."""
  rows = _adaptive_windows(x_bhwc.shape[1], output_size)  # [out, wh]
  cols = _adaptive_windows(x_bhwc.shape[2], output_size)  # [out, ww]
  x = jnp.max(x_bhwc[:, rows], axis=2)  # [B, out, W, C]
  return jnp.max(x[:, :, cols], axis=3)  # [B, out, out, C]


def _activation(name: str):
  if name == "leaky_relu":
    return lambda x: nn.leaky_relu(x, negative_slope=LEAKY_RELU_SLOPE)
  if name == "silu":
    return nn.silu
  raise ValueError(f"unknown discriminator activation {name!r}; use 'leaky_relu' or 'silu'")


class DiscriminatorBlock(nn.Module):
  """3x3 conv -> 2x down-sampling (blur or 2x2 average) -> GroupNorm(32, 1e-5) -> activation."""

  features: int
  blur_resample: bool = True
  blur_kernel_size: int = 4
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    layers.check_group_norm_channels(self.features)
    h = layers.conv(self.features, 3, dtype=self.dtype, param_dtype=self.param_dtype,
                    precision=self.precision, name="conv")(x_bhwc)
    if self.blur_resample:
      h = blur_downsample_2x(h, self.blur_kernel_size, precision=self.precision)
    else:
      h = layers.avg_pool_2x(h)
    h = layers.group_norm(GROUP_NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(h)
    return _activation(self.activation)(h)


class NLayerDiscriminatorV2(nn.Module):
  """Images ``[B, H, W, num_channels]`` -> patch logits ``[B, 16, 16, 1]`` (float32)."""

  num_channels: int = 3
  hidden_channels: int = 64
  num_stages: int = 3
  blur_resample: bool = False
  blur_kernel_size: int = 4
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, images_bhwc: jax.Array) -> jax.Array:
    if images_bhwc.shape[-1] != self.num_channels:
      raise ValueError(f"expected {self.num_channels} input channels (NHWC), got shape {images_bhwc.shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    act = _activation(self.activation)
    h = act(layers.conv(self.hidden_channels, 5, name="block_in", **kw)(images_bhwc))
    mult = (1,) + tuple(2**t for t in range(self.num_stages))
    for i in range(self.num_stages):
      h = DiscriminatorBlock(self.hidden_channels * mult[i + 1], self.blur_resample, self.blur_kernel_size,
                             self.activation, name=f"blocks_{i}", **kw)(h)
      self.sow("intermediates", f"block{i}", h)
    h = adaptive_max_pool(h, POOL_SIZE)
    self.sow("intermediates", "pool", h)
    h = act(layers.conv(h.shape[-1], 1, name="to_logits_hidden", **kw)(h))
    logits_bhw1 = layers.conv(1, 5, name="to_logits_out", **kw)(h)
    return logits_bhw1.astype(jnp.float32)


def config_get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
  """``cfg[key]`` of a dict or ConfigDict, ``default`` when absent."""
  try:
    value = cfg[key]
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def validate_discriminator_config(cfg: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first ``model.discriminator`` value that cannot build the model."""
  name = config_get(cfg, "name", NAME)
  if name != NAME:
    raise ValueError(f"model.discriminator.name={name!r} is not supported; only {NAME!r} is ported")
  stages = int(config_get(cfg, "num_stages", 3))
  if stages < 1:
    raise ValueError(f"model.discriminator.num_stages must be >= 1, got {stages}")
  if bool(config_get(cfg, "blur_resample", False)):
    k = int(config_get(cfg, "blur_kernel_size", 4))
    if k not in BLUR_TAPS:
      raise ValueError(f"model.discriminator.blur_kernel_size must be one of {sorted(BLUR_TAPS)}, got {k}")
  hidden = int(config_get(cfg, "hidden_channels", 64))
  if hidden % 32:
    raise ValueError(f"model.discriminator.hidden_channels={hidden} is not divisible by 32 (GroupNorm groups)")


def build_discriminator(cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        precision: Any = None) -> NLayerDiscriminatorV2:
  """The flax discriminator for a ``model.discriminator`` config (reference key names and defaults).

  Like the reference ``create_discriminator``, the activation is always
  LeakyReLU(0.1); the module's ``activation`` field is not read from the config.
  """
  validate_discriminator_config(cfg)
  return NLayerDiscriminatorV2(
      num_channels=int(config_get(cfg, "num_channels", 3)),
      hidden_channels=int(config_get(cfg, "hidden_channels", 64)),
      num_stages=int(config_get(cfg, "num_stages", 3)),
      blur_resample=bool(config_get(cfg, "blur_resample", False)),
      blur_kernel_size=int(config_get(cfg, "blur_kernel_size", 4)),
      dtype=dtype, param_dtype=param_dtype, precision=precision,
  )


def abstract_discriminator_params(module: NLayerDiscriminatorV2, image_size: int = INIT_IMAGE_SIZE):
  """ShapeDtypeStructs of the params (boxed with logical axis names); allocates nothing."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, module.num_channels), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)["params"]


def init_discriminator_params(module: NLayerDiscriminatorV2, rng: jax.Array, image_size: int = INIT_IMAGE_SIZE):
  x = jnp.zeros((1, image_size, image_size, module.num_channels), jnp.float32)
  return nn.meta.unbox(layers.init_params(module, rng, x))


