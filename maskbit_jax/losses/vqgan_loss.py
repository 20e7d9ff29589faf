"""The stage-I tokenizer loss (reference ``VQGANLoss``), as pure functions.

Two entry points, one per optimizer of the reference training loop
(``scripts/train_tokenizer.py``):

* :func:`generator_loss`: reconstruction + perceptual + quantizer terms, plus
  the GAN term once the discriminator is switched on; returns ``(total,
  terms)`` with ``terms`` under the reference's logging names.
* :func:`discriminator_loss`: the discriminator's GAN loss plus LeCam; the
  LeCam EMA is explicit state (:class:`~maskbit_jax.losses.gan.LeCamEMA`) in
  and out.

What the reference does, and the details the numbers depend on:

* Reconstruction: ``mean((x - x_hat)^2)`` (``l2``) or ``mean|x - x_hat|``
  (``l1``), times ``reconstruction_weight``; the logged
  ``reconstruction_loss`` is already weighted. Perceptual: ``mean`` of the
  perceptual net's output (ResNet50 gives a scalar, LPIPS one value per
  image); logged times ``perceptual_weight``.
* Entropy annealing: the quantizer's ``quantizer_loss`` already holds
  ``commitment + entropy_loss``; with ``entropy_annealing_factor > 0`` the
  reference adds ``max(0, 1 - step / entropy_annealing_steps) * factor *
  entropy_loss`` on top, so early in training the entropy term counts
  ``1 + factor`` times and from ``entropy_annealing_steps`` on once. The logged
  ``quantizer_loss`` is ``quantizer_weight`` times this annealed value; the
  logged ``entropy_loss`` is the quantizer's own (un-annealed) value. (The
  reference adds in place, which also changes the caller's
  ``extra_result_dict["quantizer_loss"]``; nothing reads it afterwards in a
  training step, so the port does not reproduce that side effect.)
* Entropy groups (``entropy_over``): each reference GPU took the quantizer's
  entropy terms on its own ``per_gpu_batch_size`` images and DDP averaged the
  losses; ``"device"`` (default) reproduces that with groups of that many
  images on any topology, ``"batch"`` takes the whole batch at once. The
  quantizer computes the terms; the train step sets its groups
  (``train.tokenizer_step.entropy_group_size``).
* Discriminator start: ``discriminator_factor`` is 0 while ``step <
  discriminator_start`` and the config value from then on
  (``gan.adopt_weight``). While it is 0 the generator does NOT run the
  discriminator: ``gan_loss`` is 0 and ``d_weight`` is just
  ``discriminator_weight`` (no adaptive weight). The discriminator update
  itself is only run from ``discriminator_start`` on
  (:func:`should_train_discriminator`, the reference's
  ``should_discriminator_be_trained``); when it runs, its loss is also
  multiplied by the factor.
* Generator GAN loss: hinge -> ``-mean(D(x_hat))``; vanilla -> the same hinge
  generator loss (sic); non-saturating -> ``mean(softplus(-D(x_hat)))``. The
  weighted term is ``d_weight * discriminator_factor * gan_loss``.
* Adaptive weight (``discriminator_gradient_penalty: adopt_weight``):
  ``d_weight = discriminator_weight * clip(|dNLL/dW| / (|dG/dW| + 1e-4), 0,
  1e4)``, gradients stopped, where ``W`` is the decoder's last conv kernel
  (``decoder.conv_out.weight`` in the reference), ``NLL = reconstruction_loss
  (weighted) + perceptual_weight * perceptual`` and ``G`` the un-weighted GAN
  loss; norms are Frobenius norms over the whole kernel (layout independent).
  Since the reconstructions are linear in ``W``, both gradients are the
  cotangent of the loss at the reconstructions pulled back through the last
  layer alone: the caller passes that pull-back as ``last_layer_vjp`` (see
  :func:`with_last_layer_vjp`), so the port needs no second pass through the
  tokenizer.
* LeCam ordering: the LeCam loss ``relu(mean D(x) - ema_fake)^2 +
  relu(ema_real - mean D(x_hat))^2`` uses the EMA from BEFORE this call; the EMA
  then moves with ``ema_decay`` (0.999) towards this call's means. Both happen
  only with ``lecam_regularization_weight > 0``, and independently of the
  discriminator factor. The discriminator sees ``inputs`` and the
  reconstructions with gradients stopped.

``step`` may be a Python int (the reference's control flow, branch by branch)
or an integer array, e.g. traced inside ``jax.jit``: then the discriminator
branch of the generator loss is a ``lax.cond`` (it is skipped, not multiplied
by zero, before ``discriminator_start``) and the annealing factor is computed
in float32 as ``max(0, (steps - step) / steps)``.

A tokenizer train step (sketch)::

  def g_loss_fn(params):
    recon, q, last_layer_vjp = with_last_layer_vjp(
        lambda p: model.apply({"params": p}, images, train=True), params)
    return generator_loss(cfg, inputs=images, reconstructions=recon, quantizer_results=q, step=step,
                          disc_apply=disc_apply, disc_params=d_params,
                          perceptual_fn=functools.partial(perceptual_fn, perceptual_vars),
                          last_layer_vjp=last_layer_vjp)
  (g_total, g_terms), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(params)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax.losses import gan
from maskbit_jax.losses import perceptual as perceptual_lib
from maskbit_jax.models import resnet50 as resnet50_lib
from maskbit_jax.models import vgg_lpips

RECONSTRUCTION_LOSSES = ("l1", "l2")
ENTROPY_OVER = ("device", "batch")
PERCEPTUAL_LOSSES = ("resnet50", "lpips")
GRADIENT_PENALTIES = ("none", "adopt_weight")
DISCRIMINATOR_LOSSES = tuple(gan.GAN_LOSSES)
# The reference's adaptive weight: norm ratio with this epsilon, clamped to [0, ADAPTIVE_WEIGHT_MAX].
ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4
# Where ``decoder.conv_out.weight`` (the reference's ``get_last_layer()``) lives in the flax params.
DECODER_LAST_LAYER = ("decoder", "conv_out", "kernel")

GENERATOR_TERMS = ("total_loss", "reconstruction_loss", "perceptual_loss", "quantizer_loss", "weighted_gan_loss",
                   "discriminator_factor", "commitment_loss", "entropy_loss", "per_sample_entropy", "avg_entropy",
                   "d_weight", "gan_loss")
DISCRIMINATOR_TERMS = ("discriminator_loss", "logits_real", "logits_fake", "lecam_loss")

PerceptualFn = Callable[[jax.Array, jax.Array], jax.Array]
DiscApply = Callable[[Any, jax.Array], jax.Array]


# --------------------------------------------------------------------------- config

_REQUIRED = object()
# key -> (default, kind); the reference reads the keys without a default with attribute access (required).
_KEYS: dict[str, tuple[Any, type]] = {
    "reconstruction_loss": (_REQUIRED, str),
    "reconstruction_weight": (1.0, float),
    "perceptual_loss": (_REQUIRED, str),
    "perceptual_weight": (_REQUIRED, float),
    "perceptual_loss_on_logits": (True, bool),
    "quantizer_weight": (_REQUIRED, float),
    "discriminator_start": (_REQUIRED, int),
    "discriminator_loss": (_REQUIRED, str),
    "discriminator_factor": (_REQUIRED, float),
    "discriminator_weight": (_REQUIRED, float),
    "discriminator_gradient_penalty": (_REQUIRED, str),
    # Read by the reference but never used in a loss; accepted, optional here.
    "discriminator_penalty_cost": (10.0, float),
    "lecam_regularization_weight": (_REQUIRED, float),
    "ema_decay": (0.999, float),
    "entropy_annealing_steps": (2000, int),
    "entropy_annealing_factor": (0.0, float),
    # This port: the converted perceptual network's weights file (read by the training script, not the loss).
    "perceptual_checkpoint": ("", str),
    # This port: the quantizer's entropy per reference GPU batch ("device") or over the whole batch ("batch").
    "entropy_over": ("device", str),
}
# Sections of ``losses`` that belong to other losses (the generator's MLM loss).
_OTHER_SECTIONS = ("mlm",)


@dataclasses.dataclass(frozen=True)
class VQGANLossConfig:
  """The ``losses`` section of a tokenizer config (reference key names and defaults)."""

  reconstruction_loss: str = "l2"
  reconstruction_weight: float = 1.0
  perceptual_loss: str = "resnet50"
  perceptual_weight: float = 0.1
  perceptual_loss_on_logits: bool = True
  quantizer_weight: float = 1.0
  discriminator_start: int = 20_000
  discriminator_loss: str = "hinge"
  discriminator_factor: float = 1.0
  discriminator_weight: float = 0.02
  discriminator_gradient_penalty: str = "none"
  discriminator_penalty_cost: float = 10.0
  lecam_regularization_weight: float = 0.001
  ema_decay: float = 0.999
  entropy_annealing_steps: int = 2000
  entropy_annealing_factor: float = 0.0
  perceptual_checkpoint: str = ""
  entropy_over: str = "device"  # train.tokenizer_step.entropy_group_size

  def __post_init__(self):
    for key, allowed in (("reconstruction_loss", RECONSTRUCTION_LOSSES), ("perceptual_loss", PERCEPTUAL_LOSSES),
                         ("discriminator_loss", DISCRIMINATOR_LOSSES),
                         ("discriminator_gradient_penalty", GRADIENT_PENALTIES), ("entropy_over", ENTROPY_OVER)):
      if getattr(self, key) not in allowed:
        raise ValueError(f"losses.{key}={getattr(self, key)!r} is not supported; use one of {list(allowed)}")
    if self.entropy_annealing_factor > 0.0 and self.entropy_annealing_steps <= 0:
      raise ValueError(f"losses.entropy_annealing_steps must be > 0 with entropy annealing, "
                       f"got {self.entropy_annealing_steps}")
    if not 0.0 <= self.ema_decay <= 1.0:
      raise ValueError(f"losses.ema_decay must be in [0, 1], got {self.ema_decay}")

  @classmethod
  def from_config(cls, losses_cfg: Mapping[str, Any]) -> "VQGANLossConfig":
    """From a ``losses`` mapping/ConfigDict; a missing required key, an unknown key or value -> ValueError."""
    keys = list(losses_cfg.keys())
    unknown = [k for k in keys if k not in _KEYS and k not in _OTHER_SECTIONS]
    if unknown:
      raise ValueError(f"unknown key(s) losses.{', losses.'.join(map(str, unknown))}; known: {sorted(_KEYS)}")
    values = {}
    for key, (default, kind) in _KEYS.items():
      value = losses_cfg[key] if key in keys else None
      if value is None:
        if default is _REQUIRED:
          raise ValueError(f"losses.{key} is required but missing from the config")
        value = default
      try:
        if kind is bool:
          if not isinstance(value, (bool, np.bool_)):
            raise TypeError
          value = bool(value)
        elif kind is int:
          if isinstance(value, bool) or float(value) != int(value):
            raise TypeError
          value = int(value)
        else:
          value = kind(value)
      except (TypeError, ValueError):
        raise ValueError(f"losses.{key}={value!r} is not a valid {kind.__name__}") from None
      values[key] = value
    return cls(**values)

  @property
  def adaptive_weight(self) -> bool:
    """Whether the GAN weight is the reference's adaptive ``d_weight`` (``adopt_weight``)."""
    return self.discriminator_gradient_penalty == "adopt_weight"


# --------------------------------------------------------------------------- schedules


def _is_python_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def discriminator_factor(cfg: VQGANLossConfig, step):
  """0 before ``discriminator_start``, then ``discriminator_factor`` (Python float for a Python step)."""
  if _is_python_number(step):
    return float(gan.adopt_weight(cfg.discriminator_factor, int(step), cfg.discriminator_start))
  return gan.adopt_weight(cfg.discriminator_factor, step, cfg.discriminator_start)


def should_train_discriminator(cfg: VQGANLossConfig, step):
  """The reference's ``should_discriminator_be_trained``: ``step >= discriminator_start``."""
  if _is_python_number(step):
    return int(step) >= cfg.discriminator_start
  return jnp.asarray(step) >= cfg.discriminator_start


def entropy_annealing_weight(cfg: VQGANLossConfig, step):
  """Extra weight of the entropy loss: ``max(0, 1 - step / steps) * factor`` (0 without annealing)."""
  if cfg.entropy_annealing_factor <= 0.0:
    return 0.0
  if _is_python_number(step):
    return max(0.0, 1 - step / cfg.entropy_annealing_steps) * cfg.entropy_annealing_factor
  steps = jnp.float32(cfg.entropy_annealing_steps)
  # (steps - step) / steps is exact for integer steps below 2^24, unlike 1 - step / steps in float32.
  ramp = (steps - jnp.asarray(step).astype(jnp.float32)) / steps
  return jnp.maximum(0.0, ramp) * jnp.float32(cfg.entropy_annealing_factor)


# --------------------------------------------------------------------------- pieces


def reconstruction_loss(cfg: VQGANLossConfig, inputs: jax.Array, reconstructions: jax.Array) -> jax.Array:
  """Weighted ``l1``/``l2`` reconstruction loss (mean over all entries), float32 scalar."""
  diff = jnp.asarray(inputs, jnp.float32) - jnp.asarray(reconstructions, jnp.float32)
  per_entry = jnp.abs(diff) if cfg.reconstruction_loss == "l1" else jnp.square(diff)
  return jnp.mean(per_entry) * jnp.float32(cfg.reconstruction_weight)


def global_norm(tree) -> jax.Array:
  """Frobenius norm over every leaf of a pytree (``torch.norm`` of the gradient tensor)."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(jnp.asarray(l, jnp.float32))) for l in leaves))


def adaptive_generator_weight(nll_grads, gan_grads) -> jax.Array:
  """``clip(|nll_grads| / (|gan_grads| + 1e-4), 0, 1e4)``, gradients stopped (before ``discriminator_weight``)."""
  weight = global_norm(nll_grads) / (global_norm(gan_grads) + ADAPTIVE_WEIGHT_EPS)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, ADAPTIVE_WEIGHT_MAX))


def _get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set_path(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _set_path(tree[path[0]], path[1:], value)
  return out


def _first_cotangent(vjp_fn, cotangent):
  return vjp_fn(cotangent)[0]


def with_last_layer_vjp(forward_fn: Callable[[Any], tuple[jax.Array, Any]], params,
                        path: tuple[str, ...] = DECODER_LAST_LAYER):
  """Runs ``forward_fn(params) -> (reconstructions, aux)`` and returns ``(reconstructions, aux, last_layer_vjp)``.

  ``last_layer_vjp(cotangent_bhwc)`` is the gradient, w.r.t. the parameter at
  ``path`` (default: the decoder's ``conv_out`` kernel, the reference's
  ``get_last_layer()``), of ``sum(cotangent * reconstructions)``: what
  :func:`generator_loss` needs for the adaptive weight. It comes from one
  ``jax.vjp`` w.r.t. that kernel alone, so everything before the last conv is
  evaluated once (as constants of the pull-back) and each pull-back is one
  transposed conv. The result is a ``jax.tree_util.Partial``, so it can be
  passed into and out of ``jit``. Gradients w.r.t. ``params`` still flow
  through ``reconstructions`` and ``aux``.
  """
  kernel = _get_path(params, path)
  reconstructions, vjp_fn, aux = jax.vjp(lambda k: forward_fn(_set_path(params, path, k)), kernel, has_aux=True)
  return reconstructions, aux, jax.tree_util.Partial(_first_cotangent, vjp_fn)


def perceptual_loss_fn(cfg: VQGANLossConfig, *, dtype: Any = jnp.float32,
                       precision: Any = None) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """``fn(variables, inputs_bhwc, reconstructions_bhwc)`` for ``losses.perceptual_loss``.

  ``resnet50``: the scalar ``PerceptualLoss`` (``perceptual_loss_on_logits``
  chooses logits only or ``layer4`` + logits), variables from
  ``perceptual.load_resnet50_params``. ``lpips``: per-image LPIPS ``[B]``,
  variables from ``perceptual.load_lpips_params``. Give
  ``functools.partial(fn, variables)`` to :func:`generator_loss`.
  """
  if cfg.perceptual_loss == "resnet50":
    model = resnet50_lib.ResNet50(dtype=dtype, precision=precision)
    return functools.partial(_resnet50_perceptual, model, cfg.perceptual_loss_on_logits)
  model = vgg_lpips.LPIPS(dtype=dtype, precision=precision)
  return functools.partial(_lpips_perceptual, model)


def _resnet50_perceptual(model, on_logits, variables, inputs, reconstructions):
  return perceptual_lib.resnet50_perceptual_loss(variables, inputs, reconstructions, on_logits=on_logits, model=model)


def _lpips_perceptual(model, variables, inputs, reconstructions):
  return model.apply(variables, inputs, reconstructions)


# --------------------------------------------------------------------------- generator


def generator_loss(
    cfg: VQGANLossConfig,
    *,
    inputs: jax.Array,
    reconstructions: jax.Array,
    quantizer_results: Mapping[str, jax.Array],
    step,
    disc_apply: DiscApply,
    disc_params,
    perceptual_fn: PerceptualFn,
    last_layer_vjp: Callable[[jax.Array], Any] | None = None,
    gan_active: bool | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The reference ``VQGANLoss._forward_generator``.

  Args:
    cfg: the loss config.
    inputs, reconstructions: ``[B, H, W, C]`` images (NHWC); gradients flow
      into ``reconstructions`` only.
    quantizer_results: the quantizer's dict (``quantizer_loss``,
      ``commitment_loss``, ``entropy_loss``, ``per_sample_entropy``,
      ``avg_entropy``, optionally ``codebook_loss``), train mode.
    step: global step (Python int, or an integer array under ``jit``).
    disc_apply: ``disc_apply(disc_params, images_bhwc) -> logits``; the
      discriminator params get no gradient from this loss.
    perceptual_fn: ``perceptual_fn(inputs, reconstructions)`` -> scalar or
      per-image values (averaged here); see :func:`perceptual_loss_fn`.
    last_layer_vjp: required with ``discriminator_gradient_penalty:
      adopt_weight``: maps a cotangent on ``reconstructions`` to the gradient
      at the decoder's last layer (:func:`with_last_layer_vjp`).
    gan_active: with a traced ``step``, whether ``step >= discriminator_start``
      if the caller knows it (a train loop compiles one step for each phase);
      the GAN branch is then chosen at trace time instead of by a
      ``lax.cond``, which under autodiff costs XLA a lot of speed on CPU.
  Returns:
    ``(total, terms)``: float32 scalar total loss and the reference's logging
    dict (:data:`GENERATOR_TERMS`, plus ``codebook_loss`` when the quantizer
    has one), gradients stopped.
  """
  if cfg.adaptive_weight and last_layer_vjp is None:
    raise ValueError("losses.discriminator_gradient_penalty='adopt_weight' needs last_layer_vjp "
                     "(see with_last_layer_vjp)")
  inputs = jax.lax.stop_gradient(jnp.asarray(inputs, jnp.float32))
  reconstructions = jnp.asarray(reconstructions, jnp.float32)
  frozen_disc_params = jax.lax.stop_gradient(disc_params)
  _, g_loss_fn = gan.gan_loss_fns(cfg.discriminator_loss)
  perceptual_weight = jnp.float32(cfg.perceptual_weight)

  def nll_fn(recon):
    rec = reconstruction_loss(cfg, inputs, recon)
    perc = jnp.mean(jnp.asarray(perceptual_fn(inputs, recon), jnp.float32))
    return rec + perceptual_weight * perc, (rec, perc)

  def gan_fn(recon):
    return g_loss_fn(disc_apply(frozen_disc_params, recon))

  def adaptive(nll_cotangent, gan_cotangent):
    return adaptive_generator_weight(last_layer_vjp(nll_cotangent), last_layer_vjp(gan_cotangent))

  one = jnp.ones((), jnp.float32)
  if gan_active is not None and not _is_python_number(step):
    factor = float(cfg.discriminator_factor) if gan_active else 0.0
  else:
    factor = discriminator_factor(cfg, step)
  if _is_python_number(step) or gan_active is not None:
    active = factor > 0.0
  elif cfg.discriminator_factor <= 0.0:
    active = False  # the factor is 0 at every step
  else:
    active = None  # known only at run time
  if active is not None:
    # The reference's control flow: the discriminator only runs once the factor is positive.
    if active and cfg.adaptive_weight:
      (_, (rec, perc)), nll_ct = jax.value_and_grad(nll_fn, has_aux=True)(reconstructions)
      g_loss, g_ct = jax.value_and_grad(gan_fn)(reconstructions)
      weight = adaptive(nll_ct, g_ct)
    else:
      _, (rec, perc) = nll_fn(reconstructions)
      g_loss = gan_fn(reconstructions) if active else jnp.zeros((), jnp.float32)
      weight = one
  else:
    _, (rec, perc) = nll_fn(reconstructions)

    def gan_on(recon):
      if not cfg.adaptive_weight:
        return gan_fn(recon), one
      g, g_ct = jax.value_and_grad(gan_fn)(recon)
      return g, adaptive(jax.grad(lambda r: nll_fn(r)[0])(recon), g_ct)

    def gan_off(recon):
      return jnp.zeros((), jnp.float32), one

    g_loss, weight = jax.lax.cond(jnp.asarray(factor) > 0.0, gan_on, gan_off, reconstructions)

  d_weight = weight * jnp.float32(cfg.discriminator_weight)
  factor_f32 = jnp.asarray(factor, jnp.float32)
  weighted_gan = d_weight * factor_f32 * g_loss

  quantizer = jnp.asarray(quantizer_results["quantizer_loss"], jnp.float32)
  if cfg.entropy_annealing_factor > 0.0:
    quantizer = quantizer + entropy_annealing_weight(cfg, step) * jnp.asarray(quantizer_results["entropy_loss"],
                                                                              jnp.float32)
  weighted_quantizer = jnp.float32(cfg.quantizer_weight) * quantizer
  weighted_perceptual = perceptual_weight * perc
  total = rec + weighted_perceptual + weighted_quantizer + weighted_gan

  sg = jax.lax.stop_gradient
  terms = dict(
      total_loss=sg(total),
      reconstruction_loss=sg(rec),
      perceptual_loss=sg(weighted_perceptual),
      quantizer_loss=sg(weighted_quantizer),
      weighted_gan_loss=sg(weighted_gan),
      discriminator_factor=factor_f32,
      commitment_loss=sg(jnp.asarray(quantizer_results["commitment_loss"], jnp.float32)),
      entropy_loss=sg(jnp.asarray(quantizer_results["entropy_loss"], jnp.float32)),
      per_sample_entropy=sg(jnp.asarray(quantizer_results["per_sample_entropy"], jnp.float32)),
      avg_entropy=sg(jnp.asarray(quantizer_results["avg_entropy"], jnp.float32)),
      d_weight=sg(d_weight),
      gan_loss=sg(g_loss),
  )
  if "codebook_loss" in quantizer_results:
    terms["codebook_loss"] = sg(jnp.asarray(quantizer_results["codebook_loss"], jnp.float32))
  return total, terms


# --------------------------------------------------------------------------- discriminator


def discriminator_loss(
    cfg: VQGANLossConfig,
    *,
    inputs: jax.Array,
    reconstructions: jax.Array,
    step,
    disc_apply: DiscApply,
    disc_params,
    lecam_ema: gan.LeCamEMA | None,
) -> tuple[jax.Array, dict[str, jax.Array], gan.LeCamEMA]:
  """The reference ``VQGANLoss._forward_discriminator``; run it only when :func:`should_train_discriminator`.

  Args:
    inputs, reconstructions: ``[B, H, W, C]``; both are treated as constants.
    step: global step (Python int or integer array).
    disc_apply, disc_params: as in :func:`generator_loss`; differentiate the
      total w.r.t. ``disc_params``.
    lecam_ema: the LeCam EMA state before this call (``gan.init_lecam_ema()``
      at the start of training; ``None`` means that).
  Returns:
    ``(total, terms, new_lecam_ema)``: ``terms`` are ``discriminator_loss``
    (the total, LeCam included), ``logits_real`` / ``logits_fake`` (batch
    means) and ``lecam_loss`` (weighted), gradients stopped. The new EMA has
    moved towards this call's means (unchanged without LeCam).
  """
  if lecam_ema is None:
    lecam_ema = gan.init_lecam_ema()
  d_loss_fn, _ = gan.gan_loss_fns(cfg.discriminator_loss)
  factor = jnp.asarray(discriminator_factor(cfg, step), jnp.float32)
  real = jax.lax.stop_gradient(jnp.asarray(inputs, jnp.float32))
  fake = jax.lax.stop_gradient(jnp.asarray(reconstructions, jnp.float32))
  logits_real = disc_apply(disc_params, real)
  logits_fake = disc_apply(disc_params, fake)
  d_loss = factor * d_loss_fn(logits_real, logits_fake)
  real_mean = jnp.mean(jnp.asarray(logits_real, jnp.float32))
  fake_mean = jnp.mean(jnp.asarray(logits_fake, jnp.float32))

  if cfg.lecam_regularization_weight > 0.0:
    # LeCam against the EMA from BEFORE this call; the EMA moves afterwards.
    lecam = gan.lecam_loss(real_mean, fake_mean, lecam_ema.real_logits_mean,
                           lecam_ema.fake_logits_mean) * jnp.float32(cfg.lecam_regularization_weight)
    new_ema = gan.lecam_ema_update(lecam_ema, real_mean, fake_mean, decay=cfg.ema_decay)
  else:
    lecam = jnp.zeros((), jnp.float32)
    new_ema = lecam_ema
  total = d_loss + lecam
  sg = jax.lax.stop_gradient
  terms = dict(discriminator_loss=sg(total), logits_real=sg(real_mean), logits_fake=sg(fake_mean),
               lecam_loss=sg(lecam))
  return total, terms, new_ema
