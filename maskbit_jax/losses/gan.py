"""GAN losses of the tokenizer training (ports of the reference ``gan_utils``), pure jnp.

Every loss takes the discriminator's logits of any shape (e.g. ``[B, 16, 16, 1]``)
and returns a float32 scalar averaged over all entries. The reference pairs
them as follows (``VQGANLoss``):

* ``hinge``: :func:`hinge_d_loss` / :func:`hinge_g_loss`;
* ``vanilla``: :func:`vanilla_d_loss` / :func:`hinge_g_loss` (sic: no vanilla generator loss);
* ``non-saturating``: :func:`non_saturating_d_loss` / :func:`non_saturating_g_loss`.

LeCam regularisation keeps an exponential moving average of the mean real and
mean fake logits; here that state is an explicit pytree (:class:`LeCamEMA`)
passed in and returned by :func:`lecam_ema_update`.
"""

from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[..., jax.Array]


def _f32(x) -> jax.Array:
  return jnp.asarray(x, dtype=jnp.float32)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``."""
  loss_real = jnp.mean(jax.nn.relu(1.0 - _f32(logits_real)))
  loss_fake = jnp.mean(jax.nn.relu(1.0 + _f32(logits_fake)))
  return 0.5 * (loss_real + loss_fake)


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """``-mean(fake)``; also the reference's generator loss for the ``vanilla`` discriminator loss."""
  return -jnp.mean(_f32(logits_fake))


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """``0.5 * (mean(softplus(-real)) + mean(softplus(fake)))``."""
  return 0.5 * (jnp.mean(jax.nn.softplus(-_f32(logits_real))) + jnp.mean(jax.nn.softplus(_f32(logits_fake))))


def sigmoid_cross_entropy_with_logits(logits: jax.Array, labels) -> jax.Array:
  """Elementwise ``-z log sigmoid(x) - (1 - z) log(1 - sigmoid(x))``, stable for any |x|.

  Written as ``max(x, 0) - x z + log1p(exp(-|x|))`` (the TensorFlow form), so
  logits of +-90 give exact, finite values. ``max`` and ``|x|`` are selects on
  ``x >= 0`` as in the reference, which keeps the gradient at exactly ``x = 0``
  equal to ``sigmoid(0) - z`` (``jnp.maximum``/``jnp.abs`` would split the tie).
  """
  x = _f32(logits)
  z = _f32(labels)
  nonneg = x >= 0
  relu_x = jnp.where(nonneg, x, 0.0)
  neg_abs_x = jnp.where(nonneg, -x, x)
  return relu_x - x * z + jnp.log1p(jnp.exp(neg_abs_x))


def non_saturating_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """``mean(ce(real, 1)) + mean(ce(fake, 0))``: a plain sum, with no 0.5 factor (unlike hinge/vanilla)."""
  real = jnp.mean(sigmoid_cross_entropy_with_logits(logits_real, 1.0))
  fake = jnp.mean(sigmoid_cross_entropy_with_logits(logits_fake, 0.0))
  return real + fake


def non_saturating_g_loss(logits_fake: jax.Array) -> jax.Array:
  """``mean(ce(fake, 1))`` = ``mean(softplus(-fake))``."""
  return jnp.mean(sigmoid_cross_entropy_with_logits(logits_fake, 1.0))


GAN_LOSSES: dict[str, tuple[LossFn, LossFn]] = {
    "hinge": (hinge_d_loss, hinge_g_loss),
    "vanilla": (vanilla_d_loss, hinge_g_loss),  # the reference pairs vanilla with the hinge generator loss
    "non-saturating": (non_saturating_d_loss, non_saturating_g_loss),
}


def gan_loss_fns(discriminator_loss: str) -> tuple[LossFn, LossFn]:
  """``(d_loss(logits_real, logits_fake), g_loss(logits_fake))`` for ``losses.discriminator_loss``."""
  try:
    return GAN_LOSSES[discriminator_loss]
  except KeyError:
    raise ValueError(f"unknown discriminator_loss {discriminator_loss!r}; use one of {sorted(GAN_LOSSES)}") from None


def lecam_loss(logits_real_mean: jax.Array, logits_fake_mean: jax.Array, ema_real_logits_mean: jax.Array,
               ema_fake_logits_mean: jax.Array) -> jax.Array:
  """LeCam regulariser (unweighted): ``relu(real - ema_fake)^2 + relu(ema_real - fake)^2``.

  ``logits_*_mean`` are the means of the current batch's logits (with
  gradient); the EMA values are the state BEFORE this step's update.
  Any shapes that broadcast; the result is averaged to a scalar.
  """
  real, fake = _f32(logits_real_mean), _f32(logits_fake_mean)
  ema_real, ema_fake = _f32(ema_real_logits_mean), _f32(ema_fake_logits_mean)
  return (jnp.mean(jnp.square(jax.nn.relu(real - ema_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake))))


@flax.struct.dataclass
class LeCamEMA:
  """EMA of the batch-mean real and fake discriminator logits (float32 scalars, both start at 0)."""

  real_logits_mean: jax.Array
  fake_logits_mean: jax.Array


def init_lecam_ema() -> LeCamEMA:
  """Both averages at zero, like the reference's ``torch.zeros((1))`` buffers."""
  return LeCamEMA(real_logits_mean=jnp.zeros((), jnp.float32), fake_logits_mean=jnp.zeros((), jnp.float32))


def lecam_ema_update(ema_state: LeCamEMA, logits_real_mean: jax.Array, logits_fake_mean: jax.Array,
                     decay: float = 0.999) -> LeCamEMA:
  """One EMA step, ``ema * decay + mean * (1 - decay)``, gradients stopped; returns the new state.

  Pass the means over ALL entries of this step's real and fake logits (the
  reference updates after computing the LeCam loss with the old state, once
  per discriminator step).
  """
  real = jax.lax.stop_gradient(_f32(logits_real_mean)).reshape(())
  fake = jax.lax.stop_gradient(_f32(logits_fake_mean)).reshape(())
  return LeCamEMA(
      real_logits_mean=_f32(ema_state.real_logits_mean) * decay + real * (1.0 - decay),
      fake_logits_mean=_f32(ema_state.fake_logits_mean) * decay + fake * (1.0 - decay),
  )


def adopt_weight(weight, step, threshold, value=0.0):
  """``value`` while ``step < threshold``, else ``weight`` (the discriminator warm-up switch).

  With Python numbers it returns a Python number, like the reference; with a
  traced/array ``step`` it returns a float32 array, so it can sit inside jit.
  """
  if all(isinstance(v, (int, float, np.integer, np.floating)) for v in (weight, step, threshold, value)):
    return value if step < threshold else weight
  return jnp.where(jnp.asarray(step) < threshold, _f32(value), _f32(weight))
