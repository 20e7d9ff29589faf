"""LPIPS (Zhang et al. 2018) on a VGG16 trunk, as the reference ``modeling/modules/lpips.py``.

The reference uses it as the evaluator's LPIPS metric and as the optional
``perceptual_loss: "lpips"`` of the tokenizer loss. Pieces, in order:

1. scaling: ``x -> (2x - 1 - shift) / scale`` per RGB channel, with
   ``shift = (-0.030, -0.088, -0.188)`` and ``scale = (0.458, 0.448, 0.450)``
   (float32 constants). The inputs are expected in [0, 1]; the reference does
   not clamp them, so the slightly out-of-range decoded images of the tokenizer
   loss go through unchanged.
2. the 13 convolutions of torchvision's ``vgg16().features`` (3x3, pad 1,
   bias, ReLU; 2x2 max pooling, stride 2, before stages 2..5), tapped after
   the last ReLU of each stage: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
   (64, 128, 256, 512, 512 channels). The final max pool (``features.30``) is
   never applied.
3. per tap: unit-normalise each position over channels,
   ``f / (sqrt(sum_c f^2) + 1e-10)`` (eps added to the norm, not under the
   root), square the difference of the two images' normalised features, apply
   the linear head (a 1x1 conv to one channel, no bias; its dropout is inactive
   in the eval mode the reference always uses), average over height and width.
4. the five per-layer values are summed (in layer order).

Parameter names follow the PyTorch keys through ``convert.lpips_mapping.lpips_param_mapping()``:
the trunk is torchvision's ``features.<i>.weight|bias`` (as in the torchvision
VGG16 file and the fixtures' recipe manifest), the heads are
``lin<k>.model.1.weight`` (as in the repository's ``pretrained/vgg_lpips.pth``;
flax ``heads_<k>``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from maskbit_jax.models import layers

Dtype = Any

# (torchvision ``features`` index, output channels) of each 3x3 conv, per stage.
VGG16_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 64), (2, 64)),
    ((5, 128), (7, 128)),
    ((10, 256), (12, 256), (14, 256)),
    ((17, 512), (19, 512), (21, 512)),
    ((24, 512), (26, 512), (28, 512)),
)
TAP_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_CHANNELS = tuple(stage[-1][1] for stage in VGG16_STAGES)  # (64, 128, 256, 512, 512)
LPIPS_SHIFT = np.asarray([-0.030, -0.088, -0.188], np.float32)
LPIPS_SCALE = np.asarray([0.458, 0.448, 0.450], np.float32)
NORMALIZE_EPS = 1e-10

def lpips_scale_inputs(images_bhwc: jax.Array) -> jax.Array:
  """The reference ``ScalingLayer``: [0, 1] RGB -> ``(2x - 1 - shift) / scale`` (float32)."""
  x = jnp.asarray(images_bhwc, jnp.float32) * 2.0 - 1.0
  return (x - LPIPS_SHIFT) / LPIPS_SCALE


def normalize_channels(features_bhwc: jax.Array, eps: float = NORMALIZE_EPS) -> jax.Array:
  """Unit L2 norm over channels at every position: ``f / (||f||_2 + eps)``.

  Same values as the reference. Where all channels are exactly zero (ReLU
  outputs can be), the gradient of ``sqrt`` at 0 would turn into NaN (as in
  PyTorch); here that position gets a zero gradient instead.
  """
  sum_sq = jnp.sum(jnp.square(features_bhwc), axis=-1, keepdims=True)
  positive = sum_sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sum_sq, 1.0)), 0.0)
  return features_bhwc / (norm + eps)


class VGG16Features(nn.Module):
  """torchvision VGG16 ``features`` up to relu5_3; returns the five LPIPS taps (NHWC).

  Takes images already passed through the scaling layer (or any VGG input).
  Convs are named ``features_<i>`` after their torchvision index.
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> tuple[jax.Array, ...]:
    taps = []
    h = x_bhwc
    for stage_index, stage in enumerate(VGG16_STAGES):
      if stage_index > 0:
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
      for torch_index, features in stage:
        h = layers.conv(features, 3, padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision, name=f"features_{torch_index}")(h)
        h = nn.relu(h)
      taps.append(h)
    return tuple(taps)


class LPIPS(nn.Module):
  """Per-image LPIPS distance between two image batches.

  ``__call__(images_a_bhwc, images_b_bhwc) -> [B]`` float32 (the reference returns
  the same values as ``[B, 1, 1, 1]``). Both batches are RGB, NHWC, in [0, 1]
  (not clamped here; the reference does not clamp either). Order does not
  matter (the distance is symmetric).
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  def setup(self):
    self.net = VGG16Features(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    self.heads = [
        layers.conv(1, 1, padding="VALID", use_bias=False, dtype=jnp.float32, param_dtype=self.param_dtype,
                    precision=self.precision)
        for _ in LPIPS_CHANNELS
    ]

  def features(self, images_bhwc: jax.Array) -> tuple[jax.Array, ...]:
    """The five VGG taps of [0, 1] images (scaling layer included), NHWC."""
    return self.net(lpips_scale_inputs(images_bhwc).astype(self.dtype))

  def __call__(self, images_a_bhwc: jax.Array, images_b_bhwc: jax.Array) -> jax.Array:
    batch = images_a_bhwc.shape[0]
    # One trunk pass over both batches: the same numbers as two passes.
    taps = self.features(jnp.concatenate([images_a_bhwc, images_b_bhwc], axis=0))
    total = None
    for head, tap in zip(self.heads, taps):
      tap = normalize_channels(tap.astype(jnp.float32))
      diff = jnp.square(tap[:batch] - tap[batch:])
      value = jnp.mean(head(diff)[..., 0], axis=(1, 2))
      total = value if total is None else total + value
    return total


def abstract_lpips_variables(model: LPIPS | None = None, image_size: int = 64):
  """Unboxed ShapeDtypeStructs of ``{"params": ...}`` (no compute, via ``jax.eval_shape``)."""
  model = model or LPIPS()
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, x))
