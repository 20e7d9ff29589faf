"""Grids and captions written for people (``maskbit_jax.image_io``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskbit_jax import image_io


def test_captions_wrap_whole_never_cut():
  assert image_io.caption_lines("class 207", 256) == ["class 207"]  # fits: one line
  assert image_io.caption_lines("yellow stripes", 96) == ["yellow stripes"]  # 15 characters fit a 96-px cell
  assert image_io.caption_lines("astronaut reconstruction", 96) == ["astronaut", "reconstruction"]
  # a word longer than a line is split over lines, every character kept
  assert "".join(image_io.caption_lines("immunohistochemistry", 64)) == "immunohistochemistry"
  assert image_io.caption_lines("", 32) == []


def test_small_images_are_upscaled_by_an_integer_factor():
  assert image_io.upscale_factor(32) == 3  # 32 px -> 96 px cells
  assert image_io.upscale_factor(96) == 1 and image_io.upscale_factor(256) == 1


def test_labelled_grid_layout(tmp_path):
  images = np.stack([np.full((32, 32, 3), v, np.float32) for v in (0.0, 0.5, 1.0)])
  path = tmp_path / "grid.png"
  image_io.save_labelled_grid(str(path), images, ["class 1", "class 2", "class 3"], ncols=2)
  grid = np.asarray(Image.open(path))
  cell, cap = 96, image_io.LINE_PX + 3  # upscaled 3x; one caption line
  assert grid.shape == (2 * (cell + cap + 2) + 2, 2 * (cell + 2) + 2, 3)  # 2 rows of caption + tile, 2 columns
  np.testing.assert_array_equal(grid[2 + cap, 2], [0, 0, 0])  # first tile's top-left pixel, under its caption
  np.testing.assert_array_equal(grid[2 + cap + cell - 1, 2 + cell - 1], [0, 0, 0])  # ... and its last one
  np.testing.assert_array_equal(grid[2 + cap, 2 + cell + 2], [127, 127, 127])  # 0.5 * 255 = 127.5, truncated


def test_row_labels_take_a_left_column(tmp_path):
  images = np.zeros((4, 32, 32, 3), np.float32)
  path = tmp_path / "grid.png"
  image_io.save_labelled_grid(str(path), images, ["a", "b", "c", "d"], ncols=2, row_labels=["original", "reconstruction"])
  grid = np.asarray(Image.open(path))
  left = image_io.CHAR_PX * len("reconstruction") + 8
  assert grid.shape[1] == left + 2 * (96 + 2) + 2
  assert (grid[:, :left] < 128).any()  # the row labels are drawn there
  with pytest.raises(ValueError, match="2 grid rows but 1 row labels"):
    image_io.save_labelled_grid(str(path), images, ["a", "b", "c", "d"], ncols=2, row_labels=["original"])
  with pytest.raises(ValueError, match="4 images but 3 captions"):
    image_io.save_labelled_grid(str(path), images, ["a", "b", "c"], ncols=2)
