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
from maskbit_jax.sampling.factorization import split_tokens
from maskbit_jax.train.optim import ema_update


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

  @classmethod
  def from_config(cls, cfg) -> "MLMSettings":
    mlm = cfg.model.mlm_model
    loss = (cfg.get("losses", None) or {}).get("mlm", {}) or {}
    return cls(class_label_dropout=float(mlm.get("class_label_dropout", 0.1)),
               mask_schedule=str(mlm.get("train_mask_schedule_strategy", "arccos")),
               label_smoothing=float(loss.get("label_smoothing", 0.1)), sum_splits=bool(loss.get("sum_splits", False)),
               use_ema=bool((cfg.get("training", None) or {}).get("use_ema", True)))


def init_train_state(module: MaskBitTransformer, tx: optax.GradientTransformation, params: Any,
                     rng: jax.Array) -> TrainState:
  # copies: the jitted step donates the state, which must not free the caller's arrays
  params = jax.tree.map(jnp.copy, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params), rng=rng)


def mlm_train_step(state: TrainState, batch: dict, *, module: MaskBitTransformer, tx: optax.GradientTransformation,
                   settings: MLMSettings) -> tuple[TrainState, dict]:
  """``batch``: ``tokens`` int ``[B, h, w]`` (or ``[B, N]``) from the frozen tokenizer, ``label`` ``[B]``."""
  rng, mask_key, drop_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
  b = batch["tokens"].shape[0]
  targets = split_tokens(batch["tokens"].reshape(b, -1), module.token_size, module.codebook_splits)
  masked, mask = mask_tokens(targets, module.mask_token, mask_key, mode=settings.mask_schedule)
  drop = jax.random.uniform(drop_key, (b,)) < settings.class_label_dropout

  def loss_fn(params):
    logits = module.apply({"params": params}, masked, batch["label"], drop, train=True, rngs={"dropout": dropout_key})
    terms = mlm_loss(logits, targets, mask, label_smoothing=settings.label_smoothing, sum_splits=settings.sum_splits)
    return terms["mlm_loss"], terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # the reference EMA counts optimizer steps from 1
  ema = ema_update(state.ema_params, params, state.step + 1) if settings.use_ema else state.ema_params
  metrics = dict(terms, grad_norm=optax.tree.norm(grads), mask_ratio=jnp.mean(mask.astype(jnp.float32)))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema, rng=state.rng), metrics


def state_shardings(module: MaskBitTransformer, tx: optax.GradientTransformation, mesh):
  """NamedShardings of the whole train state from the one rules table (optimizer moments follow their params)."""
  boxed = abstract_generator_params(module)
  param_sh = sharding.logical_to_sharding(boxed, mesh)
  abstract = nn.meta.unbox(boxed)
  opt_abstract = jax.eval_shape(tx.init, abstract)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_sh = _mirror_param_shardings(opt_abstract, abstract, param_sh, replicated)
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, ema_params=param_sh, rng=replicated)


def _mirror_param_shardings(opt_abstract, params_abstract, param_sh, replicated):
  """Shards every sub-tree of the optimizer state that has the params' structure like the params."""
  param_struct = jax.tree.structure(params_abstract)

  def is_param_tree(x):
    try:
      return jax.tree.structure(x) == param_struct
    except Exception:
      return False

  return jax.tree.map(lambda x: param_sh if is_param_tree(x) else jax.tree.map(lambda _: replicated, x),
                      opt_abstract, is_leaf=is_param_tree)


def make_jitted_step(module: MaskBitTransformer, tx: optax.GradientTransformation, settings: MLMSettings, mesh):
  """The step jitted with explicit in/out shardings and the state donated."""
  state_sh = state_shardings(module, tx, mesh)
  batch_sh = {"tokens": sharding.batch_sharding(mesh, 3), "label": sharding.batch_sharding(mesh, 1)}
  step = jax.jit(lambda s, b: mlm_train_step(s, b, module=module, tx=tx, settings=settings),
                 in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
  return step, state_sh, batch_sh
