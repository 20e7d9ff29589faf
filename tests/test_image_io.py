"""Grids and captions written for people (``maskbit_jax.image_io``)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from maskbit_jax import image_io


def test_caption_keeps_the_class_id_on_narrow_tiles():
  assert image_io.caption("class 207", 256) == "class 207"  # fits: unchanged
  assert image_io.caption("class 207", 32) == "207"  # a 32-px tile holds 5 characters: the id, not "class"
  assert image_io.caption("astronaut_photo", 32) == "astro"  # one long word: its start
  assert image_io.caption("", 32) == ""


def test_labelled_grid_layout(tmp_path):
  images = np.stack([np.full((32, 32, 3), v, np.float32) for v in (0.0, 0.5, 1.0)])
  path = tmp_path / "grid.png"
  image_io.save_labelled_grid(str(path), images, ["class 1", "class 2", "class 3"], ncols=2)
  grid = np.asarray(Image.open(path))
  assert grid.shape == (2 * (32 + 14 + 2) + 2, 2 * (32 + 2) + 2, 3)  # 2 rows of caption + tile, 2 columns
  np.testing.assert_array_equal(grid[2 + 14, 2], [0, 0, 0])  # first tile's top-left pixel, under its caption
  np.testing.assert_array_equal(grid[2 + 14, 2 + 34], [127, 127, 127])  # 0.5 * 255 = 127.5, truncated
