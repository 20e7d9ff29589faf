"""BAR-FSQ tokenizer loss (reference BAR ``ReconstructionLoss``): the generator total and the discriminator step.

Generator (images ``x``, reconstructions ``r``, both [-1, 1], NHWC):

  total = l1_w * mean|x - r| + l2_w * mean (x - r)^2           (reconstruction_loss)
        + perceptual_w * perceptual(x, r)                      (bar_perceptual; perceptual_loss)
        + d_weight * factor(step) * (-mean D(r))                (weighted_gan_loss; D on the raw r)
        + clip_w * mean (clip_pred - clip_gt)^2                (clip_loss)
        + gram_w * gram(x, r)                                  (gram.gram_loss; gram_loss)

``factor(step)`` is ``discriminator_factor`` from ``discriminator_start`` on (and the discriminator
exists, ``discriminator_weight > 0``), else 0; before that D is not run at all. ``d_weight`` is
``discriminator_weight``. The logged terms are the weighted ones, under the reference's names.

Discriminator (``mode="discriminator"``): the reconstructions are detached, clamped to [-1, 1] and
rounded to 8 bits (``round((r + 1) * 127.5) / 127.5 - 1``); ``factor(step) * hinge(D(x), D(r8))``.

Every D call refreshes the spectral-norm vectors (the reference's discriminator is always in training
mode), so ``disc_fn`` threads that state: ``disc_fn(head_params, spectral, images) -> (logits, spectral)``.
The frozen networks come in as closures (``perceptual_fn(x, r)``, ``gram_fn(x, r)``), so the same code
runs the released networks and the tests' tiny ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from maskbit_jax.losses import gan
from maskbit_jax.losses.bar_perceptual import PerceptualWeights, parse_perceptual_name

DiscFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]
PairFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class BarFsqLossSettings:
  """The ``losses`` section of a BAR-FSQ yaml (every key is read; none has a silent default)."""

  discriminator_start: int
  discriminator_factor: float
  discriminator_weight: float
  perceptual: PerceptualWeights
  perceptual_weight: float
  reconstruction_weight_l1: float
  reconstruction_weight_l2: float
  clip_loss_weight: float
  gram_loss_weight: float

  @property
  def use_discriminator(self) -> bool:
    return self.discriminator_weight > 0.0

  @classmethod
  def from_config(cls, losses: Any) -> "BarFsqLossSettings":
    get = (lambda k: losses[k]) if hasattr(losses, "__getitem__") else (lambda k: getattr(losses, k))
    try:
      return cls(discriminator_start=int(get("discriminator_start")),
                 discriminator_factor=float(get("discriminator_factor")),
                 discriminator_weight=float(get("discriminator_weight")),
                 perceptual=parse_perceptual_name(str(get("perceptual_loss"))),
                 perceptual_weight=float(get("perceptual_weight")),
                 reconstruction_weight_l1=float(get("reconstruction_weight_l1")),
                 reconstruction_weight_l2=float(get("reconstruction_weight_l2")),
                 clip_loss_weight=float(losses.get("clip_loss_weight", 0.0)),
                 gram_loss_weight=float(losses.get("gram_loss_weight", 0.0)))
    except KeyError as e:
      raise KeyError(f"losses.{e.args[0]} is missing from the BAR-FSQ config") from None


def discriminator_factor(settings: BarFsqLossSettings, step: jax.Array) -> jax.Array:
  """``discriminator_factor`` once ``step >= discriminator_start`` (and a discriminator exists), else 0."""
  on = jnp.logical_and(settings.use_discriminator, jnp.asarray(step) >= settings.discriminator_start)
  return jnp.where(on, jnp.float32(settings.discriminator_factor), jnp.float32(0.0))


def quantize_8bit(images: jax.Array) -> jax.Array:
  """Clamp to [-1, 1] and round to the 256 levels of an 8-bit image (half to even, as ``torch.round``)."""
  x = jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
  return jnp.round((x + 1.0) * 127.5) / 127.5 - 1.0


def reconstruction_loss(settings: BarFsqLossSettings, inputs: jax.Array, recons: jax.Array) -> jax.Array:
  diff = inputs.astype(jnp.float32) - recons.astype(jnp.float32)
  loss = jnp.float32(0.0)
  if settings.reconstruction_weight_l1 > 0:
    loss = loss + jnp.mean(jnp.abs(diff)) * settings.reconstruction_weight_l1
  if settings.reconstruction_weight_l2 > 0:
    loss = loss + jnp.mean(jnp.square(diff)) * settings.reconstruction_weight_l2
  return loss


def generator_loss(settings: BarFsqLossSettings, inputs: jax.Array, recons: jax.Array, step: jax.Array, *,
                   perceptual_fn: PairFn, gram_fn: PairFn | None = None, clip_pred: jax.Array | None = None,
                   clip_gt: jax.Array | None = None, disc_fn: DiscFn | None = None, disc_params: Any = None,
                   disc_spectral: Any = None, gan_active: bool | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """``(total, terms, disc_spectral')``; gradients reach ``recons`` and ``clip_pred`` only (D is frozen here).

  ``gan_active``: whether ``step >= discriminator_start``, when the caller knows it statically (one
  program per phase, D not traced before the start); None decides on the traced ``step``.
  """
  recon = reconstruction_loss(settings, inputs, recons)
  perceptual = perceptual_fn(inputs, recons)
  clip = jnp.float32(0.0)
  if settings.clip_loss_weight > 0:
    if clip_pred is None or clip_gt is None:
      raise ValueError("clip_loss_weight > 0 needs clip_pred and clip_gt (a decoder built with clip_align)")
    clip = jnp.mean(jnp.square(clip_pred.astype(jnp.float32) - jax.lax.stop_gradient(clip_gt).astype(jnp.float32)))
  gram = gram_fn(inputs, recons) if settings.gram_loss_weight > 0 else jnp.float32(0.0)
  factor = discriminator_factor(settings, step)
  gan_loss = jnp.float32(0.0)
  if settings.use_discriminator and gan_active is not False:
    if disc_fn is None:
      raise ValueError("discriminator_weight > 0 needs the discriminator (disc_fn)")
    frozen = jax.lax.stop_gradient(disc_params)

    def run(operand):
      spectral, images = operand
      logits, spectral = disc_fn(frozen, spectral, images)
      return gan.hinge_g_loss(logits), spectral

    if gan_active is None:
      gan_loss, disc_spectral = jax.lax.cond(factor > 0, run, lambda op: (jnp.float32(0.0), op[0]),
                                             (disc_spectral, recons))
    elif gan_active:
      gan_loss, disc_spectral = run((disc_spectral, recons))
  d_weight = jnp.float32(settings.discriminator_weight)
  weighted_gan = d_weight * factor * gan_loss
  total = (recon + settings.perceptual_weight * perceptual + weighted_gan + settings.clip_loss_weight * clip
           + settings.gram_loss_weight * gram)
  terms = dict(total_loss=total, reconstruction_loss=recon, perceptual_loss=settings.perceptual_weight * perceptual,
               weighted_gan_loss=weighted_gan, discriminator_factor=factor,
               clip_loss=settings.clip_loss_weight * clip, gram_loss=settings.gram_loss_weight * gram,
               d_weight=d_weight, gan_loss=gan_loss)
  return total, jax.tree.map(jax.lax.stop_gradient, terms), disc_spectral


def discriminator_loss(settings: BarFsqLossSettings, inputs: jax.Array, recons: jax.Array, step: jax.Array, *,
                       disc_fn: DiscFn, disc_params: Any, disc_spectral: Any
                       ) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """``(loss, terms, disc_spectral')``: D on the real images, then on the 8-bit reconstructions."""
  factor = discriminator_factor(settings, step)
  fake = quantize_8bit(jax.lax.stop_gradient(recons))
  logits_real, disc_spectral = disc_fn(disc_params, disc_spectral, jax.lax.stop_gradient(inputs))
  logits_fake, disc_spectral = disc_fn(disc_params, disc_spectral, fake)
  loss = factor * gan.hinge_d_loss(logits_real, logits_fake)
  terms = dict(discriminator_loss=loss, logits_real=jnp.mean(logits_real), logits_fake=jnp.mean(logits_fake))
  return loss, jax.tree.map(jax.lax.stop_gradient, terms), disc_spectral
