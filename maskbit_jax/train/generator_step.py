"""Stage II: one masked-bit-modelling step of the MaskBit generator, jitted with explicit shardings.

The train state holds everything a step changes (params, optimizer state, EMA
params, step, PRNG key), so a jitted step is a pure function
``(state, batch) -> (state, metrics)`` with the state donated.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from maskbit_jax import sharding
from maskbit_jax.losses.masking import mask_tokens
from maskbit_jax.losses.mlm import mlm_loss
from maskbit_jax.models.maskbit_transformer import MaskBitTransformer, abstract_generator_params
from maskbit_jax.bits import split_tokens
from maskbit_jax.train import microbatch
from maskbit_jax.train.optim import ema_update
from maskbit_jax.train.tokenizer_step import GRAD_NORMS, parameter_grad_norms


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array


@flax.struct.dataclass
class MLMSettings:
  """The stage-II recipe values a step needs (from ``model.mlm_model`` and ``losses.mlm``)."""

  class_label_dropout: float = flax.struct.field(pytree_node=False, default=0.1)
  mask_schedule: str = flax.struct.field(pytree_node=False, default="arccos")
  label_smoothing: float = flax.struct.field(pytree_node=False, default=0.1)
  sum_splits: bool = flax.struct.field(pytree_node=False, default=False)
  use_ema: bool = flax.struct.field(pytree_node=False, default=True)
  accumulation: int = flax.struct.field(pytree_node=False, default=1)
  max_grad_norm: float | None = flax.struct.field(pytree_node=False, default=None)  # the optimizer's clip

  @classmethod
  def from_config(cls, cfg) -> "MLMSettings":
    mlm = cfg.model.mlm_model
    loss = (cfg.get("losses", None) or {}).get("mlm", {}) or {}
    return cls(class_label_dropout=float(mlm.get("class_label_dropout", 0.1)),
               mask_schedule=str(mlm.get("train_mask_schedule_strategy", "arccos")),
               label_smoothing=float(loss.get("label_smoothing", 0.1)), sum_splits=bool(loss.get("sum_splits", False)),
               use_ema=bool((cfg.get("training", None) or {}).get("use_ema", True)),
               accumulation=int((cfg.get("training", None) or {}).get("gradient_accumulation_steps", 1)),
               max_grad_norm=_max_grad_norm(cfg))


def _max_grad_norm(cfg) -> float | None:
  value = (cfg.get("training", None) or {}).get("max_grad_norm", None)
  return None if value is None else float(value)


def init_train_state(module: MaskBitTransformer, tx: optax.GradientTransformation, params: Any,
                     rng: jax.Array) -> TrainState:
  # copies: the jitted step donates the state, which must not free the caller's arrays
  params = jax.tree.map(jnp.copy, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params), rng=rng)


def mlm_train_step(state: TrainState, batch: dict, *, module: MaskBitTransformer, tx: optax.GradientTransformation,
                   settings: MLMSettings) -> tuple[TrainState, dict]:
  """``batch``: ``tokens`` int ``[B, h, w]`` (or ``[B, N]``) from the frozen tokenizer, ``label`` ``[B]``.

  With ``settings.accumulation = k > 1`` the batch is ``k`` micro-batches of
  one optimizer step (mean gradient, see :mod:`maskbit_jax.train.microbatch`).
  """
  rng, mask_key, drop_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
  b = batch["tokens"].shape[0]
  targets = split_tokens(batch["tokens"].reshape(b, -1), module.token_size, module.codebook_splits)
  masked, mask = mask_tokens(targets, module.mask_token, mask_key, mode=settings.mask_schedule)
  drop = jax.random.uniform(drop_key, (b,)) < settings.class_label_dropout
  k = settings.accumulation
  micro = microbatch.split(dict(masked=masked, targets=targets, mask=mask, label=batch["label"], drop=drop), k)
  dropout_keys = jax.random.split(dropout_key, k)

  def micro_step(mb):
    def loss_fn(params):
      logits = module.apply({"params": params}, mb["masked"], mb["label"], mb["drop"], train=True,
                            rngs={"dropout": mb["dropout_key"]})
      terms = mlm_loss(logits, mb["targets"], mb["mask"], label_smoothing=settings.label_smoothing,
                       sum_splits=settings.sum_splits)
      return terms["mlm_loss"], terms

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return (grads, terms), None

  (grads, terms), _ = microbatch.mean_over_micro(micro_step, dict(micro, dropout_key=dropout_keys), k)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # the reference EMA counts optimizer steps from 1
  ema = ema_update(state.ema_params, params, state.step + 1) if settings.use_ema else state.ema_params
  metrics = dict(terms, grad_norm=optax.tree.norm(grads), mask_ratio=jnp.mean(mask.astype(jnp.float32)))
  metrics[GRAD_NORMS] = parameter_grad_norms(grads, settings.max_grad_norm)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema, rng=state.rng), metrics


def mlm_train_step_on_images(state: TrainState, batch: dict, tokenizer_params: Any, *, tokenizer: nn.Module,
                             module: MaskBitTransformer, tx: optax.GradientTransformation,
                             settings: MLMSettings) -> tuple[TrainState, dict]:
  """As :func:`mlm_train_step` with targets made on the fly: ``batch["image"]`` ``[B, H, W, 3]`` is encoded
  by the frozen tokenizer inside the step (the reference's ``train_maskbit.py``), no gradient reaching it."""
  _, result = tokenizer.apply({"params": tokenizer_params}, batch["image"], method="encode")
  tokens = jax.lax.stop_gradient(result["min_encoding_indices"])
  return mlm_train_step(state, {"tokens": tokens, "label": batch["label"]}, module=module, tx=tx, settings=settings)


def state_shardings(module: MaskBitTransformer, tx: optax.GradientTransformation, mesh):
  """NamedShardings of the whole train state from the one rules table (optimizer moments follow their params)."""
  boxed = abstract_generator_params(module)
  param_sh = sharding.logical_to_sharding(boxed, mesh)
  abstract = nn.meta.unbox(boxed)
  opt_abstract = jax.eval_shape(tx.init, abstract)
  replicated = sharding.replicated(mesh)
  opt_sh = sharding.optimizer_state_sharding(opt_abstract, abstract, param_sh, mesh)
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, ema_params=param_sh, rng=replicated)


def make_jitted_step(module: MaskBitTransformer, tx: optax.GradientTransformation, settings: MLMSettings, mesh,
                     *, tokenizer: nn.Module | None = None, tokenizer_params: Any = None):
  """The step jitted with explicit in/out shardings and the state donated.

  Without ``tokenizer`` the batch holds ``tokens`` (pretokenized) and the step
  is ``step(state, batch)``; with it the batch holds ``image`` and the step is
  ``step(state, batch, tokenizer_params)`` (the frozen params are an argument,
  not a constant folded into the program).
  """
  state_sh = state_shardings(module, tx, mesh)
  if tokenizer is None:
    batch_sh = {"tokens": sharding.batch_sharding(mesh, 3), "label": sharding.batch_sharding(mesh, 1)}
    step = jax.jit(lambda s, b: mlm_train_step(s, b, module=module, tx=tx, settings=settings),
                   in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    return step, state_sh, batch_sh
  batch_sh = {"image": sharding.batch_sharding(mesh, 4), "label": sharding.batch_sharding(mesh, 1)}
  tok_sh = jax.tree.map(lambda _: sharding.replicated(mesh), tokenizer_params)
  step = jax.jit(lambda s, b, tp: mlm_train_step_on_images(s, b, tp, tokenizer=tokenizer, module=module, tx=tx,
                                                          settings=settings),
                 in_shardings=(state_sh, batch_sh, tok_sh), out_shardings=(state_sh, None), donate_argnums=0)
  return step, state_sh, batch_sh
