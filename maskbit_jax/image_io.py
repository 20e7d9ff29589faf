"""Writing images and grids as PNG, and reading a folder of images."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float images in [0, 1] (values outside are clipped) -> uint8."""
  return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def make_grid(images_bhwc: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
  """``[B, H, W, 3]`` in [0, 1] -> one ``[rows*(H+pad)+pad, ...]`` float image, row-major."""
  images = np.asarray(images_bhwc, np.float32)
  b, h, w, c = images.shape
  nrows = -(-b // ncols)
  grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
  for i in range(b):
    r, q = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
  return grid


def save_png(path: str, image_hwc: np.ndarray) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(to_uint8(image_hwc)).save(path)


def caption(label: str, width_px: int) -> str:
  """``label`` cut to what fits above a ``width_px`` tile (PIL's default font is ~6 px a character); a label
  that does not fit keeps its last word, so "class 207" on a 32-px tile reads "207", not "class"."""
  room = max(4, width_px // 6)
  text = str(label)
  if len(text) > room:
    text = text.split()[-1] if text.split() else text
  return text[:room]


def save_labelled_grid(path: str, images_bhwc: np.ndarray, labels: Sequence[str], ncols: int) -> None:
  """A grid with a caption strip above every image."""
  images = to_uint8(images_bhwc)
  b, h, w, _ = images.shape
  caption_h = 14
  nrows = -(-b // ncols)
  canvas = Image.new("RGB", (ncols * (w + 2) + 2, nrows * (h + caption_h + 2) + 2), "white")
  draw = ImageDraw.Draw(canvas)
  for i in range(b):
    r, q = divmod(i, ncols)
    x, y = 2 + q * (w + 2), 2 + r * (h + caption_h + 2)
    draw.text((x + 2, y + 1), caption(labels[i], w), fill="black")
    canvas.paste(Image.fromarray(images[i]), (x, y + caption_h))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path)


def load_image_folder(folder: str, size: int) -> tuple[np.ndarray, list[str]]:
  """Every image file directly in ``folder``, centre-cropped and resized to ``size``."""
  from maskbit_jax.data.sample_images import center_crop_resize

  if not os.path.isdir(folder):
    raise FileNotFoundError(f"image folder not found: {folder}")
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
  images = [center_crop_resize(np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")), size) for n in names]
  return np.stack(images), names
