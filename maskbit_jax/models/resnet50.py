"""torchvision ResNet50 (v1.5) in flax, NHWC, for the tokenizer's perceptual loss.

Layout as ``torchvision.models.resnet50``: 7x7/2 stem conv (pad 3, no bias),
BatchNorm, ReLU, 3x3/2 max pool (pad 1), four stages of bottleneck blocks
(3, 4, 6, 3 blocks; widths 64, 128, 256, 512; expansion 4) whose stride sits on
the 3x3 conv (v1.5), a 1x1 strided conv + BatchNorm shortcut on the first block
of each stage, global average pool, and a 2048 -> 1000 linear classifier.

BatchNorm always runs in inference mode (running statistics, eps 1e-5), as
the reference puts the perceptual network in ``eval()`` and never trains it.
The running statistics live in the ``batch_stats`` collection (flax's
convention) and the affine terms in ``params``; ``convert.resnet50_mapping.resnet50_param_mapping()``
maps both collections onto the PyTorch keys (``bn.running_mean`` <->
``batch_stats/.../bn/mean``, ``bn.running_var`` <-> ``.../var``). PyTorch's
``num_batches_tracked`` counters have no flax counterpart (an eval-mode
BatchNorm never reads them); the mapping lists them as zero-valued buffers so
that its key set equals the torchvision state dict's, one to one.

Inputs are ImageNet-normalised images (``(x - mean) / std``, see
``maskbit_jax.losses.perceptual``); the module itself does no preprocessing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import initializers, layers

Dtype = Any

BN_EPS = 1e-5
EXPANSION = 4
# (bottleneck width, number of blocks, stride of the first block) per stage.
STAGES: tuple[tuple[int, int, int], ...] = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
NUM_CLASSES = 1000
FEATURES = STAGES[-1][0] * EXPANSION  # 2048

def _batch_norm(dtype: Dtype, param_dtype: Dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(
      use_running_average=True,
      epsilon=BN_EPS,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(initializers.zeros, ("norm",)),
      name=name,
  )


class Bottleneck(nn.Module):
  """torchvision ``Bottleneck``: 1x1 -> 3x3 (stride here) -> 1x1 (x4), residual, ReLU."""

  width: int
  strides: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    bn = lambda name: _batch_norm(self.dtype, self.param_dtype, name)
    h = layers.conv(self.width, 1, padding="VALID", name="conv1", **kw)(x_bhwc)
    h = nn.relu(bn("bn1")(h))
    h = layers.conv(self.width, 3, strides=self.strides, padding=((1, 1), (1, 1)), name="conv2", **kw)(h)
    h = nn.relu(bn("bn2")(h))
    h = layers.conv(self.width * EXPANSION, 1, padding="VALID", name="conv3", **kw)(h)
    h = bn("bn3")(h)
    shortcut = x_bhwc
    if self.downsample:
      shortcut = layers.conv(self.width * EXPANSION, 1, strides=self.strides, padding="VALID",
                             name="downsample_0", **kw)(x_bhwc)
      shortcut = bn("downsample_1")(shortcut)
    return nn.relu(h + shortcut)


class ResNet50(nn.Module):
  """ResNet50 on ImageNet-normalised NHWC images.

  Returns a dict: ``logits`` ``[B, 1000]`` (float32), ``pooled`` ``[B, 2048]``
  (the global average of ``layer4``, the classifier's input) and ``layer4``
  ``[B, h, w, 2048]`` (the last stage's output before pooling: what the
  reference's feature extractor calls ``"features"``).
  """

  num_classes: int = NUM_CLASSES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> dict[str, jax.Array]:
    h = layers.conv(64, 7, strides=2, padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                    param_dtype=self.param_dtype, precision=self.precision, name="conv1")(x_bhwc.astype(self.dtype))
    h = nn.relu(_batch_norm(self.dtype, self.param_dtype, "bn1")(h))
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, as torch
    for stage, (width, blocks, stride) in enumerate(STAGES, start=1):
      for block in range(blocks):
        h = Bottleneck(width, strides=stride if block == 0 else 1, downsample=block == 0, dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision, name=f"layer{stage}_{block}")(h)
    layer4 = h
    pooled = jnp.mean(layer4.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(
        self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, precision=self.precision,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(initializers.zeros, ("vocab",)),
        name="fc")(pooled)
    return {"logits": logits, "pooled": pooled, "layer4": layer4}


def abstract_resnet50_variables(model: ResNet50 | None = None, image_size: int = 224):
  """Unboxed ShapeDtypeStructs of ``{"params", "batch_stats"}`` (no compute, via ``jax.eval_shape``)."""
  model = model or ResNet50()
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))
