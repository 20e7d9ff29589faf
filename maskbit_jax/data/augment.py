"""The reference's image preprocessing (``data/webdataset_reader.py``) on uint8 HWC arrays with PIL.

Train: torchvision ``RandomResizedCrop(size, scale=(min_scale, 1), ratio)``
semantics (ten tries at a random area and log-uniform aspect ratio, then a
centre crop with the ratio clamped), PIL resize with the config's
interpolation, then a horizontal flip with probability 1/2. Without random
crops: ``Resize(size)`` of the shorter side and ``CenterCrop(size)``.
The random draws come from a ``numpy.random.Generator`` (grain's per-example
generator), so a pipeline position always gives the same crop.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def interpolation(name: str):
  if name not in INTERPOLATIONS:
    raise ValueError(f"dataset.preprocessing.interpolation={name!r}; use one of {sorted(INTERPOLATIONS)}")
  return INTERPOLATIONS[name]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float],
                            ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """``(top, left, h, w)`` of a crop drawn as torchvision's ``RandomResizedCrop.get_params`` does."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def resize_center_crop(image_hwc: np.ndarray, size: int, interp: str = "bilinear") -> np.ndarray:
  """``Resize(size)`` (shorter side) + ``CenterCrop(size)``: uint8 in, uint8 ``[size, size, 3]`` out."""
  im = Image.fromarray(image_hwc)
  w, h = im.size
  # torchvision computes the long side as int(size * long / short)
  new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
  im = im.resize((new_w, new_h), interpolation(interp))
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.asarray(im.crop((left, top, left + size, top + size)))


def train_transform(image_hwc: np.ndarray, size: int, rng: np.random.Generator, *, use_random_crop: bool = True,
                    use_aspect_ratio_aug: bool = True, min_scale: float = 0.8, interp: str = "bilinear",
                    random_flip: bool = True) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> float32 ``[size, size, 3]`` in [0, 1], augmented as in the reference."""
  if image_hwc.ndim != 3 or image_hwc.shape[-1] != 3 or image_hwc.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image_hwc.dtype} {image_hwc.shape}")
  if use_random_crop:
    ratio = ASPECT_RANGE if use_aspect_ratio_aug else (1.0, 1.0)
    top, left, h, w = random_resized_crop_box(*image_hwc.shape[:2], rng, (min_scale, 1.0), ratio)
    im = Image.fromarray(image_hwc).crop((left, top, left + w, top + h)).resize((size, size), interpolation(interp))
    out = np.asarray(im)
  else:
    out = resize_center_crop(image_hwc, size, interp)
  if random_flip and rng.uniform() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out, dtype=np.float32) / np.float32(255.0)


def check_preprocessing(pre) -> None:
  """Value checks of ``dataset.preprocessing`` (the reference's rules plus ranges)."""
  size = int(pre.get("resolution", 256))
  if size < 8:
    raise ValueError(f"dataset.preprocessing.resolution must be >= 8, got {size}")
  min_scale = float(pre.get("min_scale", 0.8))
  if not 0.0 < min_scale <= 1.0:
    raise ValueError(f"dataset.preprocessing.min_scale must be in (0, 1], got {min_scale}")
  if not pre.get("use_random_crop", True):
    if min_scale != 1.0 or pre.get("use_aspect_ratio_aug", False):
      raise ValueError("without use_random_crop, min_scale must be 1.0 and use_aspect_ratio_aug False "
                       "(as in the reference)")
  interpolation(str(pre.get("interpolation", "bilinear")))


def adm_center_crop(image_hwc: np.ndarray, size: int) -> np.ndarray:
  """ADM's centre crop (guided-diffusion, used by BAR's pretokenizing), uint8 HWC -> uint8 ``[size, size, 3]``.

  Halve the image with a box filter while its shorter side is at least ``2 * size``, resize it
  bicubically so the shorter side is ``size`` (each side rounded), then cut the centre square
  (offsets rounded down).
  """
  im = Image.fromarray(np.asarray(image_hwc, np.uint8)[..., :3])
  while min(im.size) >= 2 * size:
    im = im.resize(tuple(s // 2 for s in im.size), resample=Image.Resampling.BOX)
  scale = size / min(im.size)
  im = im.resize(tuple(round(s * scale) for s in im.size), resample=Image.Resampling.BICUBIC)
  arr = np.asarray(im)
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return arr[top:top + size, left:left + size]
