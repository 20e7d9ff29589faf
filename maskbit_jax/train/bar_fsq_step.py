"""One BAR-FSQ tokenizer training step (reference ``train_one_epoch`` of ``scripts/train_bar_fsq.py``), jitted.

Every global step uses one batch for ONE update, chosen on the host from the step number:

* before ``losses.discriminator_start`` (or without a discriminator): a generator step without the GAN
  term (``generator``);
* from it on, alternately a generator step with the GAN term (``generator_gan``, at even distances from
  the start) and a discriminator step (``discriminator``, odd): the tokenizer then only reconstructs
  (no gradient) and the discriminator trains on the real images and the 8-bit reconstructions.

The reference alternates with a flag that restarts at "generator" when a run resumes; deciding from
the step number makes resume exact. Each optimizer counts its own updates, so each schedule advances
only on its own steps, as the reference's two schedulers do. The tokenizer's EMA moves on every
global step (discriminator steps included, as the reference calls ``ema_model.step`` per batch).

The frozen networks' variables (LPIPS, ConvNeXt, Gram VGG, the DINO backbone) are an argument, not
closed over, so XLA does not fold them into the program. Images arrive in [0, 1] and are mapped to
[-1, 1], the tokenizer's range.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from maskbit_jax import sharding
from maskbit_jax.losses import bar_fsq_loss
from maskbit_jax.models import dino_discriminator as dd
from maskbit_jax.models.bar_tokenizer import BarTokenizer, abstract_bar_tokenizer_params
from maskbit_jax.train import microbatch
from maskbit_jax.train.optim import ema_update

PHASES = ("generator", "generator_gan", "discriminator")
FrozenFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (frozen variables, inputs, reconstructions)
METRICS = ("total_loss", "reconstruction_loss", "perceptual_loss", "weighted_gan_loss", "discriminator_factor",
           "clip_loss", "gram_loss", "d_weight", "gan_loss", "discriminator_loss", "logits_real", "logits_fake",
           "grad_norm", "discriminator_grad_norm")


@flax.struct.dataclass
class BarFsqTrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  disc_params: Any  # the heads only; the backbone is frozen and travels with the other frozen networks
  disc_opt_state: Any
  disc_spectral: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class BarFsqStep:
  model: BarTokenizer
  disc: dd.DinoDiscriminator | None
  settings: bar_fsq_loss.BarFsqLossSettings
  tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation
  perceptual_fn: FrozenFn
  gram_fn: FrozenFn | None = None
  use_ema: bool = True
  ema_decay: float = 0.999
  accumulation: int = 1  # micro-batches per optimizer step (training.gradient_accumulation_steps)

  def __post_init__(self):
    if int(self.accumulation) < 1:
      raise ValueError(f"training.gradient_accumulation_steps must be >= 1, got {self.accumulation}")

  def phase(self, step_number: int) -> str:
    start = self.settings.discriminator_start
    if self.disc is None or not self.settings.use_discriminator or step_number < start:
      return "generator"
    return "generator_gan" if (step_number - start) % 2 == 0 else "discriminator"


def init_state(spec: BarFsqStep, params: Any, disc_variables: Any, rng: jax.Array) -> BarFsqTrainState:
  """``disc_variables``: ``{"params": heads, "spectral": ...}`` (None without a discriminator)."""
  params = jax.tree.map(jnp.copy, params)
  heads = {} if disc_variables is None else jax.tree.map(jnp.copy, disc_variables["params"])
  spectral = {} if disc_variables is None else jax.tree.map(jnp.copy, disc_variables[dd.SPECTRAL])
  return BarFsqTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=spec.tx.init(params),
                          ema_params=jax.tree.map(jnp.copy, params), disc_params=heads,
                          disc_opt_state=spec.disc_tx.init(heads), disc_spectral=spectral, rng=rng)


def _disc_fn(spec: BarFsqStep, backbone: Any, crop_key: jax.Array):
  def fn(heads, spectral, images):
    logits, new = spec.disc.apply({"params": {"backbone": backbone, **heads}, dd.SPECTRAL: spectral}, images,
                                  crop_key=crop_key, mutable=[dd.SPECTRAL])
    return logits, new[dd.SPECTRAL]
  return fn


def _micro_crop_keys(crop_key: jax.Array, k: int) -> jax.Array:
  """One DINO crop key per micro-batch ``[k]``; without accumulation the step's own key, unchanged."""
  if k == 1:
    return crop_key[None]
  return jax.vmap(lambda i: jax.random.fold_in(crop_key, i))(jnp.arange(k))


def train_step(state: BarFsqTrainState, batch: dict, frozen: dict, *, spec: BarFsqStep,
               phase: str) -> tuple[BarFsqTrainState, dict]:
  """``batch["image"]``: float32 ``[B, H, W, 3]`` in [0, 1]; ``frozen``: ``{"perceptual", "gram", "dino"}``.

  With ``spec.accumulation = k`` the batch is ``k`` micro-batches of ``B / k`` (the reference's
  Accelerate accumulation): each is its own forward (its own virtual batches in the discriminator's
  norm, one spectral-norm iteration per D call, threaded micro-batch to micro-batch), the update uses
  the mean gradient, clipped once, and the step counter, both schedules, the phase and the EMA count
  optimizer steps. Logged terms are micro-batch means.
  """
  k = spec.accumulation
  step = state.step
  micro = {"image": microbatch.split(batch["image"].astype(jnp.float32) * 2.0 - 1.0, k),
           "crop_key": _micro_crop_keys(jax.random.fold_in(state.rng, step), k)}
  disc_fn = (lambda key: _disc_fn(spec, frozen.get("dino"), key)) if spec.disc is not None else (lambda key: None)
  zero = jnp.zeros((), jnp.float32)
  metrics = {name: zero for name in METRICS}
  params, opt_state = state.params, state.opt_state
  heads, disc_opt_state, spectral = state.disc_params, state.disc_opt_state, state.disc_spectral
  if phase in ("generator", "generator_gan"):
    perceptual = functools.partial(spec.perceptual_fn, frozen.get("perceptual"))
    gram = functools.partial(spec.gram_fn, frozen.get("gram")) if spec.gram_fn is not None else None

    def generator_micro(spectral, mb):
      def loss_fn(p):
        recon, result = spec.model.apply({"params": p}, mb["image"])
        total, terms, new_spectral = bar_fsq_loss.generator_loss(
            spec.settings, mb["image"], recon, step, perceptual_fn=perceptual, gram_fn=gram,
            clip_pred=result.get("clip_pred"), clip_gt=result.get("clip_gt"), disc_fn=disc_fn(mb["crop_key"]),
            disc_params=heads, disc_spectral=spectral, gan_active=phase == "generator_gan")
        return total, (terms, new_spectral)

      (_, (terms, spectral)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return spectral, (grads, terms)

    spectral, (grads, terms) = microbatch.mean_over_micro_with_carry(generator_micro, spectral, micro, k)
    updates, opt_state = spec.tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics.update(terms, grad_norm=optax.tree.norm(grads))
  elif phase == "discriminator":
    def discriminator_micro(spectral, mb):
      recon = jax.lax.stop_gradient(spec.model.apply({"params": params}, mb["image"])[0])

      def d_loss_fn(h):
        loss, terms, new_spectral = bar_fsq_loss.discriminator_loss(
            spec.settings, mb["image"], recon, step, disc_fn=disc_fn(mb["crop_key"]), disc_params=h,
            disc_spectral=spectral)
        return loss, (terms, new_spectral)

      (_, (terms, spectral)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(heads)
      return spectral, (d_grads, terms)

    spectral, (d_grads, terms) = microbatch.mean_over_micro_with_carry(discriminator_micro, spectral, micro, k)
    d_updates, disc_opt_state = spec.disc_tx.update(d_grads, disc_opt_state, heads)
    heads = optax.apply_updates(heads, d_updates)
    metrics.update(terms, discriminator_grad_norm=optax.tree.norm(d_grads))
  else:
    raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
  # the reference EMA counts its updates from 1 and updates on every batch
  ema = ema_update(state.ema_params, params, step + 1, decay=spec.ema_decay) if spec.use_ema else state.ema_params
  new_state = BarFsqTrainState(step=step + 1, params=params, opt_state=opt_state, ema_params=ema, disc_params=heads,
                               disc_opt_state=disc_opt_state, disc_spectral=spectral, rng=state.rng)
  return new_state, metrics


def state_shardings(spec: BarFsqStep, mesh, disc_abstract: Any) -> BarFsqTrainState:
  """Tokenizer params (and moments, EMA) by the rules table; the small discriminator heads replicated."""
  boxed = abstract_bar_tokenizer_params(spec.model)
  param_sh = sharding.logical_to_sharding(boxed, mesh)
  abstract = nn.meta.unbox(boxed)
  rep = sharding.replicated(mesh)
  heads = {} if disc_abstract is None else disc_abstract["params"]
  spectral = {} if disc_abstract is None else disc_abstract[dd.SPECTRAL]
  return BarFsqTrainState(
      step=rep, params=param_sh,
      opt_state=sharding.optimizer_state_sharding(jax.eval_shape(spec.tx.init, abstract), abstract, param_sh, mesh),
      ema_params=param_sh, disc_params=jax.tree.map(lambda _: rep, heads),
      disc_opt_state=jax.tree.map(lambda _: rep, jax.eval_shape(spec.disc_tx.init, heads)),
      disc_spectral=jax.tree.map(lambda _: rep, spectral), rng=rep)


class JittedBarFsqStep:
  """The three phase programs, jitted with explicit shardings and the state donated.

  ``step(state, batch, frozen, step_number)``: ``step_number`` is the host-side ``state.step``.
  """

  def __init__(self, spec: BarFsqStep, mesh, frozen: dict, disc_abstract: Any):
    self.spec = spec
    self.state_shardings = state_shardings(spec, mesh, disc_abstract)
    self.batch_shardings = {"image": sharding.batch_sharding(mesh, 4), "label": sharding.batch_sharding(mesh, 1)}
    self.frozen_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), frozen)
    self._fns = {phase: jax.jit(functools.partial(train_step, spec=spec, phase=phase),
                                in_shardings=(self.state_shardings, self.batch_shardings, self.frozen_shardings),
                                out_shardings=(self.state_shardings, None), donate_argnums=0)
                 for phase in PHASES}

  def __call__(self, state: BarFsqTrainState, batch: dict, frozen: dict, step_number: int):
    return self._fns[self.spec.phase(int(step_number))](state, batch, frozen)

  def lower(self, state, batch, frozen, step_number: int):
    return self._fns[self.spec.phase(int(step_number))].lower(state, batch, frozen)
