"""BAR's perceptual term (reference BAR ``PerceptualLoss``): LPIPS and/or ConvNeXt-S logits, on [-1, 1] images.

``perceptual_loss`` names the parts: ``lpips``, ``convnext_s`` or both as ``lpips-convnext_s-<w_l>-<w_c>``
(the released recipe: ``lpips-convnext_s-1.0-0.1``). The value is the weighted mean
``(w_l * lpips + w_c * convnext) / (w_l + w_c)`` (weight 1 each for a name without weights), then
``.mean()`` over the batch.

* LPIPS: BAR's copy of LPIPS takes [-1, 1] images straight into its scaling layer (MaskBit's takes
  [0, 1] and maps them first), i.e. ``vgg_lpips.LPIPS`` of ``(x + 1) / 2``; per-image values, not clamped.
* ConvNeXt-S: both batches resized to 224 with antialiased bicubic, mapped to [0, 1], ImageNet-normalised,
  through torchvision's ``convnext_small`` (IMAGENET1K_V1); MSE of the logits over ``B * 1000``.

Weights are read from the files they are published as (no torch, nothing downloaded):
:func:`load_convnext_params` for ConvNeXt, ``perceptual.load_lpips_params`` for LPIPS.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from maskbit_jax import paths, torch_resize
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.convnext_mapping import convnext_param_mapping
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.losses.perceptual import IMAGENET_MEAN, IMAGENET_STD
from maskbit_jax.models import convnext as convnext_lib
from maskbit_jax.models import vgg_lpips

CONVNEXT_IMAGE_SIZE = 224
CONVNEXT_FILE_HINT = ("torchvision's ConvNeXt-Small ImageNet weights (IMAGENET1K_V1, 'convnext_small-0c510722.pth', "
                      "published at https://download.pytorch.org/models/convnext_small-0c510722.pth)")


@dataclasses.dataclass(frozen=True)
class PerceptualWeights:
  """Which parts run and their weights (``None``: the part is off)."""

  lpips: float | None
  convnext: float | None


def parse_perceptual_name(name: str) -> PerceptualWeights:
  """The reference's parsing of ``losses.perceptual_loss``."""
  has_lpips, has_convnext = "lpips" in name, "convnext_s" in name
  if not (has_lpips or has_convnext):
    raise ValueError(f"unsupported perceptual_loss {name!r}: it must name lpips and/or convnext_s")
  if has_lpips and has_convnext:
    w_l, w_c = (float(v) for v in name.split("-")[-2:])
    return PerceptualWeights(w_l, w_c)
  return PerceptualWeights(1.0 if has_lpips else None, 1.0 if has_convnext else None)


def convnext_preprocess(images_bhwc: jax.Array, size: int = CONVNEXT_IMAGE_SIZE) -> jax.Array:
  x = torch_resize.resize(images_bhwc, size, "bicubic_aa")
  return ((x + 1.0) / 2.0 - IMAGENET_MEAN) / IMAGENET_STD


def lpips_pm1(lpips_variables: Any, inputs_bhwc: jax.Array, targets_bhwc: jax.Array, *,
              model: vgg_lpips.LPIPS | None = None) -> jax.Array:
  """BAR's LPIPS of [-1, 1] images: ``[B]`` float32."""
  model = model or vgg_lpips.LPIPS()
  return model.apply(lpips_variables, (inputs_bhwc + 1.0) / 2.0, (targets_bhwc + 1.0) / 2.0)


def convnext_logits_mse(convnext_variables: Any, inputs_bhwc: jax.Array, targets_bhwc: jax.Array, *,
                        model: convnext_lib.ConvNeXt | None = None) -> jax.Array:
  model = model or convnext_lib.ConvNeXt()
  batch = inputs_bhwc.shape[0]
  logits = model.apply(convnext_variables, convnext_preprocess(jnp.concatenate([inputs_bhwc, targets_bhwc], 0)))
  return jnp.mean(jnp.square(logits[:batch] - logits[batch:]))


def bar_perceptual_loss(weights: PerceptualWeights, inputs_bhwc: jax.Array, targets_bhwc: jax.Array, *,
                        lpips_variables: Any = None, convnext_variables: Any = None,
                        lpips_model: vgg_lpips.LPIPS | None = None,
                        convnext_model: convnext_lib.ConvNeXt | None = None) -> jax.Array:
  """The reference ``PerceptualLoss(name)(inputs, targets).mean()`` (module docstring); scalar float32."""
  total, count = jnp.float32(0.0), 0.0
  if weights.lpips is not None:
    total = total + weights.lpips * jnp.mean(lpips_pm1(lpips_variables, inputs_bhwc, targets_bhwc, model=lpips_model))
    count += weights.lpips
  if weights.convnext is not None:
    total = total + weights.convnext * convnext_logits_mse(convnext_variables, inputs_bhwc, targets_bhwc,
                                                           model=convnext_model)
    count += weights.convnext
  return total / count


def load_convnext_params(path, *, model: convnext_lib.ConvNeXt | None = None) -> dict:
  """Reads a torchvision ConvNeXt state dict (.pth/.safetensors/.npz) strictly into ``{"params": ...}``."""
  path = os.fspath(path)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} not found: put {CONVNEXT_FILE_HINT} there (maskbit_jax never downloads weights)")
  model = model or convnext_lib.ConvNeXt()
  abstract = convnext_lib.abstract_convnext_params(model)
  params = torch_state_to_flax(read_state_dict(path), abstract, convnext_param_mapping(), source=path)
  return {"params": jax.tree.map(jnp.asarray, params)}
