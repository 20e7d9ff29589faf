"""Writing images and grids as PNG, reading images of any common mode as 8-bit RGB, and reading a folder."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from maskbit_jax import paths
from maskbit_jax.data.sample_images import eval_preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# 8-bit modes PIL's convert("RGB") maps faithfully; alpha is dropped, as the reference's convert("RGB") does.
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
# 16-bit grayscale (16-bit PNG, PGM); PIL's convert("RGB") would clip these to 255, not scale them.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class CorruptImageError(ValueError):
  """An image cannot be decoded, or has no 8-bit RGB reading (its mode is named)."""


def uint16_to_uint8(values: np.ndarray) -> np.ndarray:
  """0..65535 -> 0..255 by scaling (65535 = 255 * 257), rounded."""
  return np.round(np.asarray(values, np.float64) / 257.0).astype(np.uint8)


def pil_to_rgb_uint8(im: Image.Image, name: str) -> np.ndarray:
  """A decoded PIL image -> uint8 ``[H, W, 3]``: 8-bit modes through PIL, 16-bit grayscale scaled; any other
  mode (32-bit float F, ...) has no defined pixel range and is refused naming ``name`` and the mode."""
  if im.mode in EIGHT_BIT_MODES:
    return np.asarray(im.convert("RGB"))
  if im.mode in SIXTEEN_BIT_MODES:
    gray = np.asarray(im)
    # mode I is 32-bit, but decoders give it for 16-bit files; a value beyond 16 bits means another range
    if gray.size and (gray.min() < 0 or gray.max() > 65535):
      raise CorruptImageError(f"{name}: 32-bit integer image (mode I) with values in [{gray.min()}, "
                              f"{gray.max()}], not 16-bit: convert it to 8- or 16-bit first")
    return np.repeat(uint16_to_uint8(gray)[..., None], 3, axis=-1)
  raise CorruptImageError(f"{name}: image mode {im.mode!r} is not supported (8-bit modes "
                          f"{', '.join(EIGHT_BIT_MODES)} and 16-bit grayscale are): convert it to 8-bit RGB first")


def array_to_rgb_uint8(image: np.ndarray, name: str) -> np.ndarray:
  """A decoded pixel array (``[H, W]`` or ``[H, W, C]``, C = 1, 3 or 4; uint8, uint16 or bool) -> uint8
  ``[H, W, 3]``; other dtypes or shapes are refused naming ``name``."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise CorruptImageError(f"{name}: pixel array of shape {image.shape} is not [H, W] or [H, W, 1|3|4]")
  if image.dtype == np.uint16:
    image = uint16_to_uint8(image)
  elif image.dtype == bool:
    image = image.astype(np.uint8) * 255
  elif image.dtype != np.uint8:
    raise CorruptImageError(f"{name}: pixel dtype {image.dtype} is not supported (uint8, uint16, bool)")
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def read_rgb(source, name: str | None = None) -> np.ndarray:
  """An image file (path or file object) -> uint8 ``[H, W, 3]``; a file that cannot be decoded (truncated,
  not an image, an unsupported mode) raises :class:`CorruptImageError` naming it."""
  name = name or str(source)
  try:
    with Image.open(source) as im:
      im.load()  # decode now: PIL decodes lazily, and a truncated file fails only here
      return pil_to_rgb_uint8(im, name)
  except CorruptImageError:
    raise
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... for broken files
    raise CorruptImageError(f"cannot decode image {name}: {type(e).__name__}: {e}") from e


def to_uint8(images):
  """Float images in [0, 1] -> uint8 as the reference does it everywhere an image leaves it (sample PNGs
  and ``.npz``, Inception's input, its visualisations): ``torch.clamp(x, 0, 1) * 255`` in float32, then
  ``.to(torch.uint8)``, which truncates (no +0.5 anywhere), so 0.999 -> 254 and only 1.0 -> 255.

  The one float -> uint8 conversion of this package. A jax array (or tracer) stays on its device; anything
  else goes through numpy. NaN has no defined result (as in the reference).
  """
  jax = sys.modules.get("jax")
  if jax is not None and isinstance(images, jax.Array):
    import jax.numpy as jnp

    return (jnp.clip(images.astype(jnp.float32), 0.0, 1.0) * jnp.float32(255.0)).astype(jnp.uint8)
  return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


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


def save_image(image: Image.Image, path: str) -> None:
  """``image`` to ``path`` (a local file or a URL), its parent folders made; the format from the suffix."""
  if not paths.is_url(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    return
  fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
  with paths.resolve(path).open("wb") as f:
    image.save(f, format=fmt)


def save_png(path: str, image_hwc: np.ndarray) -> None:
  save_image(Image.fromarray(to_uint8(image_hwc)), path)


# PIL's default bitmap font: about 6 px a character, 11 px a line.
CHAR_PX, LINE_PX = 6, 11
# Grid cells are upscaled (nearest neighbour, an integer factor) to at least this many pixels, so that a 32-px
# image is seen, not guessed at, and a caption of 16 characters fits above it.
MIN_CELL_PX = 96


def caption_lines(label: str, width_px: int) -> list[str]:
  """``label`` wrapped at spaces into lines that fit above a ``width_px`` cell; a word longer than a line is
  split, never dropped."""
  room = max(1, (width_px - 2) // CHAR_PX)
  lines: list[str] = []
  for word in str(label).split():
    while len(word) > room:
      lines.append(word[:room])
      word = word[room:]
    if lines and len(lines[-1]) + 1 + len(word) <= room:
      lines[-1] += " " + word
    else:
      lines.append(word)
  return lines


def upscale_factor(side_px: int, min_cell_px: int = MIN_CELL_PX) -> int:
  return max(1, -(-min_cell_px // max(side_px, 1)))


def save_labelled_grid(path: str, images_bhwc: np.ndarray, labels: Sequence[str], ncols: int,
                       row_labels: Sequence[str] = (), min_cell_px: int = MIN_CELL_PX) -> None:
  """A grid of ``images_bhwc`` (``[B, H, W, 3]`` in [0, 1], row-major, ``ncols`` a row), each under its
  caption (wrapped, whole), each cell upscaled by an integer factor to at least ``min_cell_px``, and with
  ``row_labels`` (one per row, e.g. "original" / "reconstruction") in a column on the left."""
  images = to_uint8(images_bhwc)
  b, h, w, _ = images.shape
  if len(labels) != b:
    raise ValueError(f"{b} images but {len(labels)} captions")
  nrows = -(-b // ncols)
  if row_labels and len(row_labels) != nrows:
    raise ValueError(f"{nrows} grid rows but {len(row_labels)} row labels")
  factor = upscale_factor(min(h, w), min_cell_px)
  ch, cw = h * factor, w * factor
  wrapped = [caption_lines(label, cw) for label in labels]
  caption_h = LINE_PX * max([len(lines) for lines in wrapped] + [1]) + 3
  left = (CHAR_PX * max(len(str(r)) for r in row_labels) + 8) if row_labels else 0
  canvas = Image.new("RGB", (left + ncols * (cw + 2) + 2, nrows * (ch + caption_h + 2) + 2), "white")
  draw = ImageDraw.Draw(canvas)
  for r, text in enumerate(row_labels):
    draw.text((4, 2 + r * (ch + caption_h + 2) + caption_h + ch // 2 - LINE_PX // 2), str(text), fill="black")
  for i in range(b):
    r, q = divmod(i, ncols)
    x, y = left + 2 + q * (cw + 2), 2 + r * (ch + caption_h + 2)
    for k, line in enumerate(wrapped[i]):
      draw.text((x + 2, y + 1 + k * LINE_PX), line, fill="black")
    tile = Image.fromarray(images[i])
    canvas.paste(tile.resize((cw, ch), Image.NEAREST) if factor > 1 else tile, (x, y + caption_h))
  save_image(canvas, path)


def load_image_folder(folder: str, size: int, interpolation: str = "bilinear") -> tuple[np.ndarray, list[str]]:
  """Every image file directly in ``folder``, preprocessed to ``size`` as the reference evaluates
  (``sample_images.eval_preprocess``: shorter side resized, centre crop)."""
  root = paths.resolve(folder)
  if not root.is_dir():
    raise FileNotFoundError(f"image folder not found: {folder}")
  names = sorted(p.name for p in root.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
  images = [eval_preprocess(_read_path(root / n), size, interpolation) for n in names]
  return np.stack(images), names


def _read_path(path) -> np.ndarray:
  """``read_rgb`` of a local file or an object (read whole: PIL seeks, which an object stream may not)."""
  if not paths.is_url(path):
    return read_rgb(os.fspath(path))

  return read_rgb(io.BytesIO(path.read_bytes()), name=os.fspath(path))


def check_output_path(path: str, *, folder: bool) -> str:
  """``path`` (absolute) if a command can write its output folder (``folder``) or file there, made with its
  parents at the end; else a ValueError naming the problem. Run before the work, so a bad path fails in
  seconds rather than after the sampling or evaluation. A URL (``gs://...``) is only checked not to be
  the wrong kind: an object store makes folders as it writes, and permissions show on the first write."""
  if paths.is_url(path):
    target = paths.resolve(path)
    if folder and target.exists() and not target.is_dir():
      raise ValueError(f"{path} exists and is not a folder")
    if not folder and target.is_dir():
      raise ValueError(f"{path} is a folder, not a file")
    return paths.as_str(path)
  path = os.path.abspath(path)
  if folder and os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{path} exists and is not a folder")
  if not folder and os.path.isdir(path):
    raise ValueError(f"{path} is a folder, not a file")
  parent = path if folder else os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"cannot create {path}: {parent} is a file, not a folder")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"cannot write to {parent} (permission denied), where {path} would be made")
  return path
