"""Images that need no download: a few real photos and a deterministic synthetic set.

The photos ship inside scikit-image (``skimage.data``; public-domain / CC0
images such as NASA's astronaut portrait and the coffee cup). The synthetic set
is labelled and fully determined by its seed.
"""

from __future__ import annotations

import numpy as np
import skimage.data

from maskbit_jax.data.augment import resize_center_crop

# skimage.data loaders whose files are inside the wheel (no network).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def eval_preprocess(image_hwc: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
  """uint8 RGB ``[H, W, 3]`` -> float32 ``[size, size, 3]`` in [0, 1] as the reference evaluates:
  torchvision ``Resize(size, interpolation)`` of the shorter side (the longer one ``int(size * long / short)``),
  ``CenterCrop(size)`` (offsets ``round((side - size) / 2)``) and ``ToTensor`` (``/ 255``), on PIL.

  ``interpolation`` is ``dataset.preprocessing.interpolation`` (MaskBit; the reference's default, bilinear)
  or bicubic (BAR's evaluation): see :func:`maskbit_jax.data.sources.eval_interpolation`.
  """
  image = np.ascontiguousarray(np.asarray(image_hwc, np.uint8)[..., :3])
  return resize_center_crop(image, size, interpolation).astype(np.float32) / np.float32(255.0)


def photo_arrays(names: tuple[str, ...] = PHOTOS) -> list[np.ndarray]:
  """The embedded photos at their stored sizes, uint8 ``[H, W, 3]``."""
  return [np.ascontiguousarray(getattr(skimage.data, n)()[..., :3]) for n in names]


def sample_photos(size: int = 256, names: tuple[str, ...] = PHOTOS,
                  interpolation: str = "bilinear") -> tuple[np.ndarray, list[str]]:
  """The embedded photos as float32 NHWC ``[N, size, size, 3]`` in [0, 1] (:func:`eval_preprocess`) and their
  names."""
  images = [eval_preprocess(im, size, interpolation) for im in photo_arrays(names)]
  return np.stack(images), list(names)


SHAPE_NAMES = ("disc", "square", "triangle", "stripes")
HUE_NAMES = ("red", "green", "blue", "yellow")
NUM_SHAPES = len(SHAPE_NAMES)
NUM_HUES = len(HUE_NAMES)


def class_name(label: int) -> str:
  """The synthetic set's name of class ``label``: "<hue> <shape>", e.g. 6 -> "green triangle"."""
  label = int(label)
  if not 0 <= label < NUM_SHAPES * NUM_HUES:
    raise ValueError(f"the synthetic set has classes 0..{NUM_SHAPES * NUM_HUES - 1}, got {label}")
  return f"{HUE_NAMES[label // NUM_SHAPES]} {SHAPE_NAMES[label % NUM_SHAPES]}"


def class_caption(label: int, source: str) -> str:
  """How a grid names class ``label`` of data source ``source`` (``dataset.source``): the synthetic set's
  class names ("green triangle"), else "class <label>"."""
  return class_name(label) if str(source).startswith("synthetic:") else f"class {int(label)}"


def synthetic_images(num: int, size: int = 64, seed: int = 0, num_classes: int = NUM_SHAPES * NUM_HUES,
                     first_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A labelled synthetic set: float32 ``[num, size, size, 3]`` in [0, 1] and int32 labels.

  Class c draws shape ``c % 4`` (disc, square, triangle, stripes) in hue
  ``(c // 4) % 4`` on a smooth two-colour background; position, scale,
  rotation of the stripes, colours' brightness and a little noise vary per
  image. Image i depends only on (seed, i), so any shard of the set can be
  produced independently: this returns images ``first_index .. first_index + num - 1``.
  """
  if num_classes > NUM_SHAPES * NUM_HUES or num_classes < 1:
    raise ValueError(f"num_classes must be in [1, {NUM_SHAPES * NUM_HUES}], got {num_classes}")
  images = np.empty((num, size, size, 3), np.float32)
  labels = np.empty((num,), np.int32)
  yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
  for i in range(num):
    rng = np.random.default_rng([seed, first_index + i])
    label = int(rng.integers(num_classes))
    shape, hue = label % NUM_SHAPES, (label // NUM_SHAPES) % NUM_HUES
    bg_a, bg_b = rng.uniform(0.1, 0.5, 3), rng.uniform(0.1, 0.5, 3)
    t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy + 1) / 2
    image = bg_a * (1 - t[..., None]) + bg_b * t[..., None]
    cx, cy = rng.uniform(-0.4, 0.4, 2)
    r = rng.uniform(0.3, 0.55)
    if shape == 0:
      mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    elif shape == 1:
      mask = (np.abs(xx - cx) < r * 0.85) & (np.abs(yy - cy) < r * 0.85)
    elif shape == 2:
      mask = (yy - cy < r) & (yy - cy > -r + 2 * np.abs(xx - cx))
    else:
      angle = rng.uniform(0, np.pi)
      mask = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 10.0) > 0
      mask &= (xx - cx) ** 2 + (yy - cy) ** 2 < (1.6 * r) ** 2
    colour = np.roll(np.array([0.95, 0.25, 0.1]), hue) if hue < 3 else np.array([0.95, 0.9, 0.2])
    colour = colour * rng.uniform(0.8, 1.0)
    image = np.where(mask[..., None], colour, image)
    image = image + rng.normal(0, 0.02, image.shape)
    images[i] = np.clip(image, 0.0, 1.0)
    labels[i] = label
  return images, labels
