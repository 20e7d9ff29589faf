"""torch ``F.interpolate`` on NHWC images (float32), each mode one static ``[out, in]`` matrix per axis.

The modes the ported losses and networks resize with:

* ``bilinear_aa``: ``mode="bilinear", antialias=True, align_corners=False``.
  The ResNet50 perceptual loss (MaskBit) resizes to 224 with it.
* ``bicubic_aa``: ``mode="bicubic", antialias=True``. The ConvNeXt perceptual
  term (BAR) resizes with it.
* ``bicubic``: ``mode="bicubic", align_corners=False`` (no antialias): source
  ``scale * (i + 0.5) - 0.5`` (not clamped), Keys cubic with ``A = -0.75`` on the
  four taps around it, taps past the border read the border pixel. The DINO
  discriminator up-samples small images this way.
* ``bilinear``: ``mode="bilinear", align_corners=False`` (no antialias): source
  clamped at 0, two taps. The Gram loss resizes with it.
* ``area``: ``mode="area"`` (adaptive average pooling): output ``i`` averages
  inputs ``[floor(i * in / out), ceil((i + 1) * in / out))``. The DINO
  discriminator down-samples large images this way.

The two antialiased modes are torch's one separable antialiasing filter with
different kernels: the triangle (support 1) for bilinear, the cubic of
``a = -0.5`` (PIL's; support 2) for bicubic. When down-sampling by ``scale =
in / out`` the kernel is widened by ``scale``; output ``i`` is centred at
``scale * (i + 0.5)``, reads the inputs ``[trunc(center - support + 0.5),
trunc(center + support + 0.5))`` clipped to the image, and its weights are
renormalised to sum to 1 (which is how the borders are handled). The bounds are
computed in float32 as torch does.

Every resize is separable: one matmul per axis (highest precision), width first
(as torch's CPU kernel).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("bilinear_aa", "bicubic_aa", "bicubic", "bilinear", "area")
_CUBIC_A = -0.75
_CUBIC_A_AA = -0.5


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
  return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


def _bicubic(in_size: int, out_size: int) -> np.ndarray:
  m = np.zeros((out_size, in_size), np.float64)
  if in_size == out_size:  # torch copies
    return np.eye(in_size)
  scale = in_size / out_size
  for i in range(out_size):
    src = scale * (i + 0.5) - 0.5
    base = math.floor(src)
    t = src - base
    for offset, w in zip((-1, 0, 1, 2), _keys_cubic(np.asarray([t + 1.0, t, 1.0 - t, 2.0 - t]), _CUBIC_A)):
      m[i, min(max(base + offset, 0), in_size - 1)] += w
  return m


def _triangle(x: np.ndarray) -> np.ndarray:
  return np.maximum(1.0 - np.abs(x), 0.0)


def _antialiased(in_size: int, out_size: int, kernel, radius: float) -> np.ndarray:
  """torch's antialiased resampling along one axis for ``kernel`` of support ``radius`` (module docstring)."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  support = f32(radius) * scale if scale >= 1 else f32(radius)
  invscale = f32(1.0) / scale if scale >= 1 else f32(1.0)
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = f32(float(scale) * (i + 0.5))
    lo = max(int(float(f32(center - support)) + 0.5), 0)
    hi = min(int(float(f32(center + support)) + 0.5), in_size)
    taps = np.arange(lo, hi, dtype=np.float64)
    w = kernel((taps - float(center) + 0.5) * float(invscale))
    if w.sum() != 0:
      m[i, lo:hi] = w / w.sum()
  return m


def _bilinear_aa(in_size: int, out_size: int) -> np.ndarray:
  return _antialiased(in_size, out_size, _triangle, 1.0)


def _bicubic_aa(in_size: int, out_size: int) -> np.ndarray:
  return _antialiased(in_size, out_size, lambda x: _keys_cubic(x, _CUBIC_A_AA), 2.0)


def _bilinear(in_size: int, out_size: int) -> np.ndarray:
  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for i in range(out_size):
    src = max(scale * (i + 0.5) - 0.5, 0.0)
    i0 = min(int(src), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    frac = src - i0
    m[i, i0] += 1.0 - frac
    m[i, i1] += frac
  return m


def _area(in_size: int, out_size: int) -> np.ndarray:
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    lo = (i * in_size) // out_size
    hi = -((-(i + 1) * in_size) // out_size)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


@functools.lru_cache(maxsize=64)
def resize_matrix(mode: str, in_size: int, out_size: int) -> np.ndarray:
  """``[out_size, in_size]`` float32 weights of one axis of ``mode`` (see the module docstring)."""
  makers = dict(bilinear_aa=_bilinear_aa, bicubic_aa=_bicubic_aa, bicubic=_bicubic, bilinear=_bilinear,
                area=_area)
  if mode not in makers:
    raise ValueError(f"unknown resize mode {mode!r}; choose one of {MODES}")
  return makers[mode](int(in_size), int(out_size)).astype(np.float32)


def resize(images_bhwc: jax.Array, size: int | tuple[int, int], mode: str) -> jax.Array:
  """``F.interpolate(x, size, mode=...)`` of NHWC images; returns float32 ``[B, h, w, C]``."""
  out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
  _, in_h, in_w, _ = images_bhwc.shape
  x = jnp.asarray(images_bhwc, jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  if out_w != in_w:
    x = jnp.einsum("pw,bhwc->bhpc", resize_matrix(mode, in_w, out_w), x, precision=hp)
  if out_h != in_h:
    x = jnp.einsum("oh,bhwc->bowc", resize_matrix(mode, in_h, out_h), x, precision=hp)
  return x
