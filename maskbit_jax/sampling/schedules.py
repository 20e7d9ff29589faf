"""Step schedules of MaskGIT-style sampling (reference ``masking.py`` / ``sampling.py``).

Every function is plain ``jnp`` in float32, so ``step`` / ``progress`` may be
traced values inside a ``lax.scan``. Only ``mode`` / ``annealing`` strings are
static; an unknown one raises ``ValueError`` naming the allowed values.

Step ``i`` of ``S`` (0-based) has progress ``p = (i + 1) / S``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Training-time masking lives with the training losses; re-exported here so the
# two schedule families can be found in one place without a second copy.
from maskbit_jax.losses.masking import TRAIN_MASK_MODES, train_mask_ratio

MASK_SCHEDULES = ("linear", "square", "cosine", "arccos", "root")
GUIDANCE_ANNEALING = ("none", "linear", "cosine")

MIN_MASK_RATIO = 1e-6  # the reference clamps the ratio to [1e-6, 1]

__all__ = [
    "GUIDANCE_ANNEALING", "MASK_SCHEDULES", "TRAIN_MASK_MODES", "annealed_softmax_temperature",
    "check_finite_settings", "check_guidance_annealing", "check_mask_schedule", "guidance_multiplier",
    "masking_ratio", "noise_scale_factor", "step_progress", "train_mask_ratio",
]


def check_mask_schedule(mode: str) -> None:
  if mode not in MASK_SCHEDULES:
    raise ValueError(f"unknown mask schedule {mode!r}; choose one of {MASK_SCHEDULES}")


def check_guidance_annealing(annealing: str) -> None:
  if annealing not in GUIDANCE_ANNEALING:
    raise ValueError(f"unknown guidance annealing {annealing!r}; choose one of {GUIDANCE_ANNEALING}")


def check_finite_settings(**settings: float) -> None:
  """A ValueError naming the first setting that is NaN or infinite: such a scale or temperature turns every
  logit into NaN and the sampler's argmax then returns token 0 everywhere, without any error."""
  for name, value in settings.items():
    if not math.isfinite(value):
      raise ValueError(f"{name}={value!r}: sampling settings must be finite numbers")


def _step_f32(step) -> jax.Array:
  return jnp.asarray(step).astype(jnp.float32)


def step_progress(step, num_steps: int) -> jax.Array:
  """``(i + 1) / S`` in float32 (equal to the reference's float64 value rounded to float32)."""
  return (_step_f32(step) + 1.0) / jnp.float32(num_steps)


def noise_scale_factor(step, num_steps: int) -> jax.Array:
  """``1 - p`` of step ``i``, the factor on the confidence noise, in float32.

  Computed as ``(S - i - 1) / S`` (one rounding) rather than ``1 - p`` in float32
  (two roundings), which matches the reference's float64 ``1 - p`` cast to float32.
  """
  return (jnp.float32(num_steps) - _step_f32(step) - 1.0) / jnp.float32(num_steps)


def masking_ratio(progress, mode: str = "arccos") -> jax.Array:
  """Fraction of the entries that stay masked after a step with this ``progress``.

  float32 math on ``float32(progress)``, clamped to ``[1e-6, 1]`` as the
  reference's ``get_masking_ratio`` (so the last step still keeps 1e-6 > 0).
  """
  check_mask_schedule(mode)
  r = jnp.asarray(progress, jnp.float32)
  if mode == "root":
    ratio = 1.0 - jnp.sqrt(r)
  elif mode == "square":
    ratio = 1.0 - r * r
  elif mode == "cosine":
    ratio = jnp.cos(r * jnp.float32(math.pi) * 0.5)
  elif mode == "arccos":
    ratio = jnp.arccos(r) / jnp.float32(math.pi * 0.5)
  else:  # linear
    ratio = 1.0 - r
  return jnp.clip(ratio, jnp.float32(MIN_MASK_RATIO), jnp.float32(1.0))


def guidance_multiplier(step, num_steps: int, annealing: str = "none", scale_pow: float = 4.0) -> jax.Array:
  """The factor ``s_i`` on the guidance scale at step ``i`` (float32, shape of ``step``).

  ``none``: 1; ``linear``: ``i / S``; ``cosine``: ``(1 - cos(pi (i / S)^pow)) / 2``.
  Note both annealed forms are 0 at the first step (they use ``i``, not ``i + 1``).
  """
  check_guidance_annealing(annealing)
  t = _step_f32(step) / jnp.float32(num_steps)
  if annealing == "none":
    return jnp.ones_like(t)
  if annealing == "linear":
    return t
  return (1.0 - jnp.cos(jnp.power(t, jnp.float32(scale_pow)) * jnp.float32(math.pi))) / 2.0


def annealed_softmax_temperature(progress) -> jax.Array:
  """Sampling temperature with ``use_sampling_annealing``: ``0.5 + 0.8 (1 - p)``, float32."""
  return 0.5 + 0.8 * (1.0 - jnp.asarray(progress, jnp.float32))
