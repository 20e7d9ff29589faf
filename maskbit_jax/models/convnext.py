"""torchvision's ConvNeXt (Liu et al. 2022), inference only, NHWC: the network of BAR's ``convnext_s`` perceptual term.

Layout (torchvision ``ConvNeXt``; ``convnext_small`` is stages (96, 3), (192, 3), (384, 27), (768, 3)):

* ``features.0``: stem, 4x4 conv stride 4 (``.0``) + channel LayerNorm (``.1``);
* ``features.<2s+1>``: stage ``s``, a list of CNBlocks: depthwise 7x7 conv (``block.0``), LayerNorm
  (``block.2``), Linear to 4x (``block.3``), exact GELU, Linear back (``block.5``), times the per-channel
  ``layer_scale`` (stored ``[C, 1, 1]``), plus the input (stochastic depth is off at inference);
* ``features.<2s+2>``: downsampling between stages, LayerNorm (``.0``) + 2x2 conv stride 2 (``.1``);
* global average pool, ``classifier.0`` LayerNorm, ``classifier.2`` Linear to the classes.

Every LayerNorm has eps 1e-6. Parameter names map to the torchvision keys through
``convert.convnext_mapping.convnext_param_mapping`` (the IMAGENET1K_V1 file loads strictly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


LN_EPS = 1e-6
CONVNEXT_SMALL = ((96, 3), (192, 3), (384, 27), (768, 3))


def _ln(name: str, dtype: Any, param_dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


class CNBlock(nn.Module):
  channels: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    c = self.channels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    scale = self.param("layer_scale", nn.initializers.constant(1e-6), (c, 1, 1), self.param_dtype)
    h = nn.Conv(c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c, name="block_0", **kw)(x_bhwc)
    h = _ln("block_2", self.dtype, self.param_dtype)(h)
    h = nn.Dense(4 * c, name="block_3", **kw)(h)
    h = nn.Dense(c, name="block_5", **kw)(nn.gelu(h, approximate=False))
    return x_bhwc + h * scale.reshape(c).astype(h.dtype)


class ConvNeXt(nn.Module):
  """``[B, H, W, 3]`` (ImageNet-normalised) -> logits ``[B, num_classes]`` float32."""

  stages: Sequence[tuple[int, int]] = CONVNEXT_SMALL
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    first = self.stages[0][0]
    x = nn.Conv(first, (4, 4), strides=(4, 4), padding="VALID", name="features_0_0", **kw)(x_bhwc.astype(self.dtype))
    x = _ln("features_0_1", self.dtype, self.param_dtype)(x)
    for s, (channels, depth) in enumerate(self.stages):
      if s > 0:
        x = _ln(f"features_{2 * s}_0", self.dtype, self.param_dtype)(x)
        x = nn.Conv(channels, (2, 2), strides=(2, 2), padding="VALID", name=f"features_{2 * s}_1", **kw)(x)
      for j in range(depth):
        x = CNBlock(channels, name=f"features_{2 * s + 1}_{j}", **kw)(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = _ln("classifier_0", jnp.float32, self.param_dtype)(x)
    return nn.Dense(self.num_classes, name="classifier_2", dtype=jnp.float32, param_dtype=self.param_dtype,
                    precision=self.precision)(x)


def stages_from_block_setting(block_setting: Sequence[Sequence[Any]]) -> tuple[tuple[int, int], ...]:
  """torchvision ``CNBlockConfig(input_channels, out_channels, num_layers)`` rows -> ``(channels, depth)``."""
  return tuple((int(row[0]), int(row[2])) for row in block_setting)


def abstract_convnext_params(model: ConvNeXt, image_size: int = 32) -> Any:
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))["params"]
