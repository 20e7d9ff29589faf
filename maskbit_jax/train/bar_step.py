"""One BAR training step: masked bit modelling on AR steps, jitted with explicit shardings and a donated state.

What a step does (the reference ``generator_train_one_epoch`` for BAR):

* **Label dropout**: each label becomes the null class with probability
  ``model.generator.class_label_dropout`` (``losses.bar_masking.drop_labels``).
* **Random order, annealed to raster**: each image is generated in a uniform
  random order with probability ``rar_random_ratio(step)`` (1 until
  ``randomness_anneal_start``, linearly to 0 at ``randomness_anneal_end``),
  else in raster order (``losses.bar_masking.sample_orders``).
* **MBM loss**: the model masks ``round(k * r)`` bits of every AR step,
  ``r = clip(1 - sigmoid(0.8 n), 1/k, 1)`` (logit-normal), and weighs the
  per-bit cross-entropy 1.0 on masked and 0.1 on visible bits
  (``losses.bar_masking.mbm_masking``, ``losses.bar_mbm_loss.mbm_loss``,
  called inside ``BarGenerator.__call__``).
* AdamW with the reference's parameter groups (``train.bar_optim``); an EMA
  only with ``training.use_ema`` (the released recipe has none).

Compute runs in the module's ``dtype`` (bfloat16 with
``training.mixed_precision=bf16``); params, the head's logits and the loss stay
float32. The batch holds ``bits`` ``[B, cells*K]`` (0/1, cells row-major) from
a pretokenized set, or ``image`` ``[B, H, W, 3]`` that the frozen MaskBit LFQ
tokenizer turns into bits inside the step (bit j of a token = LFQ channel j,
the least significant first).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from maskbit_jax import sharding
from maskbit_jax.bits import indices_to_flat_bits
from maskbit_jax.losses.bar_masking import drop_labels, rar_random_ratio, sample_orders
from maskbit_jax.losses.bar_mbm_loss import generator_mbm_loss
from maskbit_jax.models.bar_generator import BarGenerator, abstract_bar_params
from maskbit_jax.models.model_config import BarGeneratorConfig
from maskbit_jax.train import microbatch
from maskbit_jax.train.bar_optim import rar_anneal_steps
from maskbit_jax.train.optim import ema_update
from maskbit_jax.train.tokenizer_step import GRAD_NORMS, parameter_grad_norms

DEFAULT_EMA_DECAY = 0.9999


@flax.struct.dataclass
class BarTrainState:
  """Everything a step changes. ``ema_params`` is None without ``training.use_ema`` (the released recipe)."""

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array


@flax.struct.dataclass
class BarSettings:
  """The recipe values a step needs (``model.generator.*``, ``training.*``)."""

  class_label_dropout: float = flax.struct.field(pytree_node=False, default=0.1)
  anneal_start: int = flax.struct.field(pytree_node=False, default=125_000)
  anneal_end: int = flax.struct.field(pytree_node=False, default=187_500)
  use_ema: bool = flax.struct.field(pytree_node=False, default=False)
  ema_decay: float = flax.struct.field(pytree_node=False, default=DEFAULT_EMA_DECAY)
  accumulation: int = flax.struct.field(pytree_node=False, default=1)
  max_grad_norm: float | None = flax.struct.field(pytree_node=False, default=None)  # the optimizer's clip

  @classmethod
  def from_config(cls, cfg) -> "BarSettings":
    training = cfg.get("training", None) or {}
    start, end = rar_anneal_steps(cfg)
    settings = cls(class_label_dropout=BarGeneratorConfig.from_config(cfg).class_label_dropout, anneal_start=start,
                   anneal_end=end, use_ema=bool(training.get("use_ema", False)),
                   ema_decay=float(training.get("ema_decay", DEFAULT_EMA_DECAY)),
                   accumulation=int(training.get("gradient_accumulation_steps", 1)),
                   max_grad_norm=None if training.get("max_grad_norm", None) is None
                   else float(training["max_grad_norm"]))
    settings.check()
    return settings

  def check(self) -> None:
    if not 0.0 <= self.class_label_dropout <= 1.0:
      raise ValueError(f"model.generator.class_label_dropout must be in [0, 1], got {self.class_label_dropout}")
    if self.anneal_end < self.anneal_start:
      raise ValueError(f"model.generator.randomness_anneal_end ({self.anneal_end}) is before "
                       f"randomness_anneal_start ({self.anneal_start})")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"training.ema_decay must be in [0, 1), got {self.ema_decay}")
    if self.accumulation < 1:
      raise ValueError(f"training.gradient_accumulation_steps must be >= 1, got {self.accumulation}")


def init_train_state(tx: optax.GradientTransformation, params: Any, rng: jax.Array, *,
                     use_ema: bool = False) -> BarTrainState:
  # copies: the jitted step donates the state, which must not free the caller's arrays
  params = jax.tree.map(jnp.copy, params)
  return BarTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       ema_params=jax.tree.map(jnp.copy, params) if use_ema else None, rng=rng)


# LFQ token indices [B, h, w] -> BAR bits [B, h*w*K] int32 (the name tests and callers use)
indices_to_bit_rows = indices_to_flat_bits


def masked_bit_accuracy(logits_nkc: jax.Array, target_nk: jax.Array, masks_nk: jax.Array) -> jax.Array:
  """Fraction of masked bits whose arg-max prediction is right (float32)."""
  right = (jnp.argmax(logits_nkc, axis=-1) == target_nk) & masks_nk
  return jnp.sum(right, dtype=jnp.float32) / jnp.maximum(jnp.sum(masks_nk, dtype=jnp.float32), 1.0)


def bar_train_step(state: BarTrainState, batch: dict, *, module: BarGenerator, tx: optax.GradientTransformation,
                   settings: BarSettings) -> tuple[BarTrainState, dict]:
  """``batch``: ``bits`` int ``[B, cells*K]`` (0/1) and ``label`` int ``[B]``.

  With ``settings.accumulation = k > 1`` the batch is ``k`` micro-batches of one
  optimizer step (mean gradient, :mod:`maskbit_jax.train.microbatch`).
  """
  bits = batch["bits"].astype(jnp.int32)
  b = bits.shape[0]
  key_drop, key_order, key_mask, key_dropout = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
  cond_ids, dropped = drop_labels(batch["label"], key_drop, drop_prob=settings.class_label_dropout,
                                  num_classes=module.num_classes, target_codebook_size=module.target_codebook_size)
  random_prob = rar_random_ratio(state.step, settings.anneal_start, settings.anneal_end)
  orders = sample_orders(key_order, b, module.num_steps, random_prob)
  k = settings.accumulation
  micro = microbatch.split(dict(bits=bits, cond=cond_ids, orders=orders), k)
  micro.update(mask_key=jax.random.split(key_mask, k), dropout_key=jax.random.split(key_dropout, k))

  def micro_step(mb):
    def loss_fn(params):
      loss, aux = generator_mbm_loss(module.apply({"params": params}, mb["bits"], mb["cond"], mb["orders"],
                                                  train=True, rngs={"masking": mb["mask_key"],
                                                                    "dropout": mb["dropout_key"]}))
      acc = masked_bit_accuracy(aux["logits"], aux["target"], aux["masks"])
      return loss, dict(mbm_loss=loss, masked_bit_acc=acc, mask_ratio=jnp.mean(aux["mask_ratio"]))

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return (grads, terms), None

  (grads, terms), _ = microbatch.mean_over_micro(micro_step, micro, k)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if settings.use_ema:  # the reference EMA counts optimizer steps from 1
    ema = ema_update(state.ema_params, params, state.step + 1, decay=settings.ema_decay)
  metrics = dict(terms, grad_norm=optax.tree.norm(grads), random_order_prob=random_prob,
                 label_drop_rate=jnp.mean(dropped.astype(jnp.float32)))
  metrics[GRAD_NORMS] = parameter_grad_norms(grads, settings.max_grad_norm)
  return BarTrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                       rng=state.rng), metrics


def bar_train_step_on_images(state: BarTrainState, batch: dict, tokenizer_params: Any, *, tokenizer: nn.Module,
                             module: BarGenerator, tx: optax.GradientTransformation,
                             settings: BarSettings) -> tuple[BarTrainState, dict]:
  """As :func:`bar_train_step` with bits made on the fly: ``batch["image"]`` ``[B, H, W, 3]`` goes through
  the frozen MaskBit LFQ tokenizer inside the step (no gradient reaches it)."""
  _, result = tokenizer.apply({"params": tokenizer_params}, batch["image"], method="encode")
  indices = jax.lax.stop_gradient(result["min_encoding_indices"])
  bits = indices_to_bit_rows(indices, module.token_bits)
  return bar_train_step(state, {"bits": bits, "label": batch["label"]}, module=module, tx=tx, settings=settings)


def state_shardings(module: BarGenerator, tx: optax.GradientTransformation, mesh, *, use_ema: bool):
  """NamedShardings of the whole train state from the one rules table (optimizer moments follow their params)."""
  boxed = abstract_bar_params(module)
  param_sh = sharding.logical_to_sharding(boxed, mesh)
  abstract = nn.meta.unbox(boxed)
  opt_abstract = jax.eval_shape(tx.init, abstract)
  replicated = sharding.replicated(mesh)
  opt_sh = sharding.optimizer_state_sharding(opt_abstract, abstract, param_sh, mesh)
  return BarTrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                       ema_params=param_sh if use_ema else None, rng=replicated)


def make_jitted_step(module: BarGenerator, tx: optax.GradientTransformation, settings: BarSettings, mesh, *,
                     tokenizer: nn.Module | None = None, tokenizer_params: Any = None):
  """``(step, state_shardings, batch_shardings)``: the step jitted with explicit in/out shardings, state donated.

  Without ``tokenizer`` the batch holds ``bits`` (pretokenized) and the step is
  ``step(state, batch)``; with it the batch holds ``image`` and the step is
  ``step(state, batch, tokenizer_params)`` (the frozen params are an argument,
  not a constant folded into the program).
  """
  state_sh = state_shardings(module, tx, mesh, use_ema=settings.use_ema)
  label_sh = sharding.batch_sharding(mesh, 1)
  if tokenizer is None:
    batch_sh = {"bits": sharding.batch_sharding(mesh, 2), "label": label_sh}
    step = jax.jit(lambda s, b: bar_train_step(s, b, module=module, tx=tx, settings=settings),
                   in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    return step, state_sh, batch_sh
  batch_sh = {"image": sharding.batch_sharding(mesh, 4), "label": label_sh}
  tok_sh = jax.tree.map(lambda _: sharding.replicated(mesh), tokenizer_params)
  step = jax.jit(lambda s, b, tp: bar_train_step_on_images(s, b, tp, tokenizer=tokenizer, module=module, tx=tx,
                                                          settings=settings),
                 in_shardings=(state_sh, batch_sh, tok_sh), out_shardings=(state_sh, None), donate_argnums=0)
  return step, state_sh, batch_sh
