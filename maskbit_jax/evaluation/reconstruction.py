"""Reconstruction metrics of image pairs: per-image MAE, MSE, PSNR and SSIM, and their running means.

As the reference ``TokenizerEvaluator`` (``evaluator/evaluator.py``) computes
them: each image reduced to one number (mean over C, H, W), then averaged over
images. Images are NHWC in [0, 1]; the per-image values are jnp (on device),
their sums float64 on the host (``ReconstructionMetrics``, see ``accumulator``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax.evaluation.accumulator import Accumulator, batch_mask, process_local_rows

PSNR_EPS = 1e-10           # reference: 10 log10(range^2 / (mse + 1e-10)).
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Images handed to [0, 1] metrics must lie in this range (decoded images are not
# clamped and may overshoot [0, 1] a little; anything further out is a wrong range,
# e.g. [-1, 1] or [0, 255] images).
IMAGE_RANGE_LIMITS = (-0.5, 1.5)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_images_nhwc(x, name: str) -> None:
  """Shape (always) and value-range (when concrete) checks for NHWC [0, 1] images."""
  shape = tuple(np.shape(x))
  if len(shape) != 4:
    raise ValueError(f"{name}: expected NHWC images [B, H, W, C], got shape {shape}")
  if shape[-1] not in (1, 3):
    hint = " (it looks like NCHW: transpose to NHWC)" if shape[1] in (1, 3) else ""
    raise ValueError(f"{name}: expected 1 or 3 channels last (NHWC), got shape {shape}{hint}")
  if _is_concrete(x) and np.size(x):
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
      raise ValueError(f"{name}: expected float images in [0, 1], got dtype {x.dtype}")
    if isinstance(x, jax.Array):  # also for arrays spread over several processes
      lo, hi = float(jnp.min(x)), float(jnp.max(x))
    else:
      lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
      raise ValueError(f"{name}: images contain NaN or inf")
    if lo < IMAGE_RANGE_LIMITS[0] or hi > IMAGE_RANGE_LIMITS[1]:
      raise ValueError(f"{name}: images must be in [0, 1] (values in {list(IMAGE_RANGE_LIMITS)} tolerated), "
                       f"got range [{lo:.4g}, {hi:.4g}]")


def _check_image_pair(real, fake) -> None:
  _check_images_nhwc(real, "real")
  _check_images_nhwc(fake, "fake")
  if tuple(np.shape(real)) != tuple(np.shape(fake)):
    raise ValueError(f"real and fake images differ in shape: {np.shape(real)} vs {np.shape(fake)}")


def mae_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array) -> jax.Array:
  """Mean absolute error of each image ``[B]`` (NHWC, [0, 1])."""
  _check_image_pair(real_bhwc, fake_bhwc)
  return jnp.mean(jnp.abs(fake_bhwc - real_bhwc), axis=(1, 2, 3))


def mse_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array) -> jax.Array:
  """Mean squared error of each image ``[B]`` (NHWC, [0, 1])."""
  _check_image_pair(real_bhwc, fake_bhwc)
  return jnp.mean(jnp.square(fake_bhwc - real_bhwc), axis=(1, 2, 3))


def psnr_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array, data_range: float = 1.0) -> jax.Array:
  """PSNR of each image ``[B]``: ``10 log10(range^2 / (mse + 1e-10))`` (the reference's epsilon)."""
  mse = mse_per_image(real_bhwc, fake_bhwc)
  return 10.0 * jnp.log10(data_range**2 / (mse + PSNR_EPS))


@functools.lru_cache(maxsize=None)
def ssim_kernel(kernel_size: int = SSIM_KERNEL_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """The reference's normalised 2-D Gaussian window ``[k, k]``, built in float32 like it."""
  half = (kernel_size - 1) * 0.5
  x = np.linspace(-half, half, kernel_size, dtype=np.float32)
  g = np.exp(np.float32(-0.5) * np.square(x / np.float32(sigma)))
  g = g / g.sum()
  return np.outer(g, g)


def ssim_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array, *, data_range: float = 1.0,
                   kernel_size: int = SSIM_KERNEL_SIZE, sigma: float = SSIM_SIGMA,
                   k1: float = SSIM_K1, k2: float = SSIM_K2) -> jax.Array:
  """SSIM of each image ``[B]``, as the reference evaluator computes it.

  Gaussian window (11 x 11, sigma 1.5) applied per channel after REFLECT padding
  by ``(k - 1) / 2`` (so the SSIM map has the image size), ``C1 = (0.01 range)^2``,
  ``C2 = (0.03 range)^2``, variances as ``E[x^2] - E[x]^2``, and the map averaged
  over H, W and channels.
  """
  _check_image_pair(real_bhwc, fake_bhwc)
  if kernel_size % 2 != 1 or kernel_size < 1:
    raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
  pad = (kernel_size - 1) // 2
  b, h, w, c = real_bhwc.shape
  if min(h, w) <= pad:
    raise ValueError(f"SSIM with a {kernel_size}x{kernel_size} window needs H and W > {pad}, got {h}x{w}")
  kernel = jnp.asarray(ssim_kernel(kernel_size, float(sigma)))
  kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2

  x = fake_bhwc.astype(jnp.float32)
  y = real_bhwc.astype(jnp.float32)
  pad_cfg = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  x = jnp.pad(x, pad_cfg, mode="reflect")
  y = jnp.pad(y, pad_cfg, mode="reflect")
  stacked = jnp.concatenate([x, y, x * x, y * y, x * y], axis=0)
  filtered = jax.lax.conv_general_dilated(
      stacked, kernel, window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
      precision=jax.lax.Precision.HIGHEST)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(filtered, 5, axis=0)
  mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
  sigma_xx = e_xx - mu_xx
  sigma_yy = e_yy - mu_yy
  sigma_xy = e_xy - mu_xy
  ssim_map = ((2 * mu_xy + c1) * (2 * sigma_xy + c2)) / ((mu_xx + mu_yy + c1) * (sigma_xx + sigma_yy + c2))
  return jnp.mean(ssim_map, axis=(1, 2, 3))


RECONSTRUCTION_METRICS = ("MAE", "MSE", "PSNR", "SSIM")


@jax.jit
def _reconstruction_per_image(real_bhwc, fake_bhwc):
  return {
      "MAE": mae_per_image(real_bhwc, fake_bhwc),
      "MSE": mse_per_image(real_bhwc, fake_bhwc),
      "PSNR": psnr_per_image(real_bhwc, fake_bhwc),
      "SSIM": ssim_per_image(real_bhwc, fake_bhwc),
  }


def reconstruction_metrics_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array) -> dict[str, jax.Array]:
  """``{"MAE", "MSE", "PSNR", "SSIM"}`` -> per-image values ``[B]`` (jitted; inputs checked first)."""
  _check_image_pair(real_bhwc, fake_bhwc)
  return _reconstruction_per_image(real_bhwc, fake_bhwc)


class ReconstructionMetrics(Accumulator):
  """Running float64 sums of per-image metrics; ``compute()`` gives their means over images.

  The reference evaluator also reduces each image to one number first (mean over
  C, H, W) and divides the sum over images by the number of images; PSNR is
  therefore the mean of per-image PSNRs, not the PSNR of the mean MSE. ``names``
  may add per-image values computed elsewhere (e.g. ``"LPIPS"``), handed to
  ``update(..., extra_per_image={"LPIPS": values})``.
  """

  def __init__(self, names: Sequence[str] = RECONSTRUCTION_METRICS):
    self.names = tuple(names)
    if len(set(self.names)) != len(self.names):
      raise ValueError(f"duplicate metric names {self.names}")
    self.count = 0
    self.sums = np.zeros((len(self.names),), np.float64)

  def update(self, real_bhwc, fake_bhwc, mask=None, extra_per_image: Mapping[str, Any] | None = None
             ) -> ReconstructionMetrics:
    """Adds one batch of real/fake NHWC [0, 1] images (the four built-in metrics on device)."""
    values = dict(extra_per_image or {})
    builtin = [n for n in self.names if n in RECONSTRUCTION_METRICS]
    if builtin:
      per_image = reconstruction_metrics_per_image(real_bhwc, fake_bhwc)
      values.update({n: per_image[n] for n in builtin})
    return self.update_per_image(values, mask)

  def update_per_image(self, values: Mapping[str, Any], mask=None) -> ReconstructionMetrics:
    """Adds per-image values ``{name: [B]}``; every name of this accumulator must be given."""
    missing = [n for n in self.names if n not in values]
    extra = [n for n in values if n not in self.names]
    if missing or extra:
      raise ValueError(f"per-image values must have exactly the names {self.names}; missing {missing}, unknown {extra}")
    arrays = [process_local_rows(values[n]).astype(np.float64).reshape(-1) for n in self.names]
    batch = arrays[0].shape[0]
    if any(a.shape[0] != batch for a in arrays):
      raise ValueError(f"per-image values differ in length: {[a.shape[0] for a in arrays]}")
    m = batch_mask(mask, batch)
    if m is not None:
      arrays = [a[m] for a in arrays]
    for a, n in zip(arrays, self.names):
      if not np.isfinite(a).all():
        raise ValueError(f"{n}: per-image values contain NaN or inf")
    self.count += arrays[0].shape[0]
    self.sums += np.array([a.sum() for a in arrays])
    return self

  def merge(self, other: ReconstructionMetrics) -> ReconstructionMetrics:
    self._check_same_kind(other)
    if other.names != self.names:
      raise ValueError(f"cannot merge metrics {self.names} with {other.names}")
    out = ReconstructionMetrics(self.names)
    out.count = self.count + other.count
    out.sums = self.sums + other.sums
    return out

  def compute(self) -> dict[str, float]:
    if self.count < 1:
      raise ValueError("no images accumulated")
    return {n: float(s / self.count) for n, s in zip(self.names, self.sums)}

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"count": np.asarray(self.count, np.int64), "sums": self.sums}

  def with_state(self, state: Mapping[str, np.ndarray]) -> ReconstructionMetrics:
    out = ReconstructionMetrics(self.names)
    out.count = int(state["count"])
    out.sums = np.asarray(state["sums"], np.float64).copy()
    return out
