"""BAR's Gram (style) loss on VGG16 features (reference ``GramLoss``), NHWC.

For inputs ``x`` and targets ``y`` in [-1, 1]:

1. both resized to 224 x 224, plain bilinear (``align_corners=False``, no antialias), mapped to [0, 1]
   and ImageNet-normalised;
2. run through every layer of torchvision's ``vgg16().features`` (31 layers: conv, ReLU, ..., max pool);
3. for each layer output ``f [C, H, W]``: ``G = f f^T / (C H W)``; the loss sums ``mean((G_x - G_y)^2)``
   over the layers (mean over ``B * C * C``).

torchvision's ReLUs are in-place, and the reference keeps references to the layer outputs: each conv
output it collected is overwritten by the ReLU after it. So every conv contributes the Gram matrix of
its RELU'D output (counted twice, once for the conv and once for the ReLU); this reproduces that.

The trunk is described by a torchvision ``make_layers`` config (``VGG16_CFG``: channel counts and
``"M"`` for pooling); conv ``i`` (torchvision index) is named ``features_<i>`` so the torchvision VGG16
file loads through ``convert.lpips_mapping.lpips_param_mapping``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax import paths, torch_resize
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.lpips_mapping import lpips_param_mapping
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.losses.perceptual import IMAGENET_MEAN, IMAGENET_STD, VGG16_FILE_HINT
from maskbit_jax.models import layers

VGG16_CFG: tuple[Any, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                              512, 512, 512, "M")
GRAM_IMAGE_SIZE = 224


class VGGLayerOutputs(nn.Module):
  """A torchvision VGG ``features`` stack returning the output of every layer as the reference sees it."""

  cfg: Sequence[Any] = VGG16_CFG
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> list[jax.Array]:
    outputs, index, h = [], 0, x_bhwc.astype(self.dtype)
    for item in self.cfg:
      if item == "M":
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
        outputs.append(h)
        index += 1
        continue
      h = layers.conv(int(item), 3, padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, name=f"features_{index}")(h)
      h = nn.relu(h)
      outputs += [h, h]  # the conv's entry was overwritten in place by its ReLU
      index += 2
    return outputs


def gram_matrix(features_bhwc: jax.Array) -> jax.Array:
  """``[B, H, W, C] -> [B, C, C]``, normalised by ``C * H * W`` (float32)."""
  b, h, w, c = features_bhwc.shape
  f = features_bhwc.astype(jnp.float32).reshape(b, h * w, c)
  return jnp.einsum("bnc,bnd->bcd", f, f, precision=jax.lax.Precision.HIGHEST) / (c * h * w)


def gram_preprocess(images_bhwc: jax.Array, size: int = GRAM_IMAGE_SIZE) -> jax.Array:
  x = torch_resize.resize(images_bhwc, size, "bilinear")
  return ((x + 1.0) / 2.0 - IMAGENET_MEAN) / IMAGENET_STD


def gram_loss(variables: Any, inputs_bhwc: jax.Array, targets_bhwc: jax.Array, *,
              model: VGGLayerOutputs | None = None) -> jax.Array:
  """The reference ``GramLoss(inputs, targets)`` (module docstring); scalar float32."""
  model = model or VGGLayerOutputs()
  batch = inputs_bhwc.shape[0]
  outs = model.apply(variables, gram_preprocess(jnp.concatenate([inputs_bhwc, targets_bhwc], axis=0)))
  total = jnp.float32(0.0)
  for f in outs:
    g = gram_matrix(f)
    total = total + jnp.mean(jnp.square(g[:batch] - g[batch:]))
  return total


def load_gram_vgg_params(path, *, model: VGGLayerOutputs | None = None) -> dict:
  """The ``features.*`` tensors of a torchvision VGG16 file (.pth/.safetensors/.npz) -> ``{"params": ...}``.

  The classifier (never run) is ignored; any other missing / extra / mis-shaped tensor is an error.
  """
  path = os.fspath(path)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} not found: put {VGG16_FILE_HINT} there (maskbit_jax never downloads weights)")
  model = model or VGGLayerOutputs()
  full = read_state_dict(path)
  state = {k: full[k] for k in full if not k.startswith("classifier.")}
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))["params"]
  params = torch_state_to_flax(state, abstract, lpips_param_mapping(), source=path)
  return {"params": jax.tree.map(jnp.asarray, params)}
