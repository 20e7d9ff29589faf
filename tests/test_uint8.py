"""Float -> uint8 as the reference does it wherever an image leaves it: ``torch.clamp(x, 0, 1) * 255`` in
float32, then ``.to(torch.uint8)`` (truncation; no +0.5), one function (``image_io.to_uint8``) everywhere."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from maskbit_jax import image_io
from maskbit_jax.evaluation import runs as evaluation_runs
from maskbit_jax.evaluation.adm_samples import images_to_uint8


def _grid() -> np.ndarray:
  """float32 values: every k/255, the float32 just below and above each, 0, 1, 0.999, out of range."""
  k = np.arange(256, dtype=np.float32) / np.float32(255.0)
  below = np.nextafter(k, np.float32(-np.inf))
  above = np.nextafter(k, np.float32(np.inf))
  mids = (np.arange(255, dtype=np.float32) + np.float32(0.5)) / np.float32(255.0)  # where rounding would differ
  edges = np.array([0.0, 1.0, 0.999, 1 / 255, 0.5, -1.0, 2.0, -0.0, 1e-30, -1e-30, 1.0000001, np.inf, -np.inf],
                   np.float32)
  return np.concatenate([k, below, above, mids, np.nextafter(mids, np.float32(0)), edges])


def _reference(x: float) -> int:
  """The reference's formula, one float32 value at a time: clamp, x255 rounded to float32, truncate."""
  clamped = np.float32(min(max(float(x), 0.0), 1.0))
  return math.trunc(float(np.float32(clamped * np.float32(255.0))))


def test_to_uint8_is_the_reference_formula():
  x = _grid()
  want = np.array([_reference(v) for v in x], np.uint8)
  got = image_io.to_uint8(x)
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)
  # truncation, not rounding: the mid-points k + 1/2 go down, 0.999 is 254, only 1.0 (and above) is 255
  np.testing.assert_array_equal(image_io.to_uint8(np.array([0.0, 1.0, 0.999, 1 / 255, 0.5, -1.0, 2.0])),
                                [0, 255, 254, 1, 127, 0, 255])
  mids = (np.arange(255, dtype=np.float32) + np.float32(0.5)) / np.float32(255.0)
  np.testing.assert_array_equal(image_io.to_uint8(mids), np.arange(255))
  # a uint8 image read as float (ToTensor's k / 255) comes back unchanged
  np.testing.assert_array_equal(image_io.to_uint8(np.arange(256, dtype=np.float32) / np.float32(255.0)),
                                np.arange(256))
  # float64 input is converted to float32 first, as the reference's tensors are float32
  np.testing.assert_array_equal(image_io.to_uint8(x.astype(np.float64)), want)


def test_every_writer_uses_it(tmp_path):
  x = _grid()[None, None, :].repeat(3, axis=0)[..., None].repeat(3, axis=-1)  # [3, 1, N, 3]
  want = image_io.to_uint8(x)
  np.testing.assert_array_equal(np.asarray(image_io.to_uint8(jnp.asarray(x))), want)  # on the device
  np.testing.assert_array_equal(np.asarray(jax.jit(image_io.to_uint8)(jnp.asarray(x))), want)  # traced
  np.testing.assert_array_equal(np.asarray(evaluation_runs.to_uint8(jnp.asarray(x))), want)  # Inception's input
  np.testing.assert_array_equal(images_to_uint8(x), want)  # the ADM samples .npz
  image_io.save_png(str(tmp_path / "x.png"), x[0])
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), want[0])
  image_io.save_labelled_grid(str(tmp_path / "g.png"), x[:1], ["a"], ncols=1, min_cell_px=1)  # no upscaling
  cap = image_io.LINE_PX + 3
  tile = np.asarray(Image.open(tmp_path / "g.png"))[2 + cap:2 + cap + 1, 2:2 + x.shape[2]]
  np.testing.assert_array_equal(tile, want[0])
