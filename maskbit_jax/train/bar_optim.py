"""BAR's optimizer: AdamW with the reference's weight-decay exclusion rule, warm-up + cosine to a floor.

What the reference does (``utils/train_utils.create_optimizer``, ``utils/lr_schedulers.py``,
``generator_train_one_epoch``) and how it maps here:

* Parameter groups. A parameter gets NO weight decay when it has fewer than 2
  dimensions, or its lower-cased name contains ``norm``, ``ln``, ``embedding``
  or ``embed``, or its name contains ``bias`` (case-sensitive). The substring
  test is on the PyTorch name: every ``adaLN_modulation`` / ``adaln_before_head``
  weight (via "ln"), the head's ``output_embed`` and ``t_embedder`` weights
  escape decay; ``cls_token``, ``input_merge``, ``latent_condition_proj`` and
  ``lm_head.input_proj`` weights are decayed. Parameters whose name contains
  ``encoder`` use ``lr * model.vq_model.encoder_lr_mult`` (no generator
  parameter does). ``requires_grad=False`` parameters (the MBM head's Fourier
  frequencies ``t_embedder.W``) are in no group: their update is zero and their
  gradient does not count towards the clipping norm.
* Flax names differ from PyTorch's, so the rule is evaluated on
  ``name_fn(path)``: pass the model's ``ParamMapping.torch_key`` to use the
  PyTorch names exactly (the default joins the flax path with dots).
* Clipping: ``clip_grad_norm_(max_grad_norm)`` over the trainable gradients,
  torch's ``1e-6`` included (``optim.clip_by_global_norm_torch``).
* Schedule (``cosine``): ``step / max(1, warmup)`` during warm-up, then
  ``(end_lr + (base_lr - end_lr) * max(0, (1 + cos(pi p)) / 2)) / base_lr`` with
  ``p = (step - warmup) / max(1, total - warmup)`` (not clamped), times each
  group's lr. That is ``optim.cosine_with_minimum_schedule`` with the floor
  ``end_lr / base_lr``. optax hands the schedule the count BEFORE the update,
  i.e. optimizer step k (0-based) uses ``schedule(k)`` as the reference does.
* AdamW: torch's decoupled decay (``p -= lr * wd * p``) equals optax's
  ``adamw``; ``eps`` 1e-8 (torch default; the yamls set none).
* Gradient accumulation: ``optax.MultiSteps`` around the whole chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from flax import traverse_util

from maskbit_jax.train.optim import clip_by_global_norm_torch, cosine_with_minimum_schedule

NO_DECAY_SUBSTRINGS_LOWER = ("norm", "ln", "embedding", "embed")
NO_DECAY_SUBSTRINGS_EXACT = ("bias",)
# Parameters with requires_grad=False in the reference (never optimised).
NOT_OPTIMISED_SUFFIXES = ("t_embedder.W",)
ENCODER_SUBSTRING = "encoder"

FROZEN, DECAY, NO_DECAY = "frozen", "decay", "no_decay"
_MISSING = object()

NameFn = Callable[[tuple[str, ...]], str]
StackedFn = Callable[[tuple[str, ...]], bool]


def no_weight_decay(name: str, ndim: int) -> bool:
  """The reference rule: True when the parameter ``name`` (PyTorch name) gets weight decay 0."""
  lower = name.lower()
  return (ndim < 2 or any(s in lower for s in NO_DECAY_SUBSTRINGS_LOWER)
          or any(s in name for s in NO_DECAY_SUBSTRINGS_EXACT))


def is_not_optimised(name: str) -> bool:
  """True for the reference's ``requires_grad=False`` parameters (``*.t_embedder.W``)."""
  return any(name == s or name.endswith("." + s) for s in NOT_OPTIMISED_SUFFIXES)


def bar_tokenizer_not_optimised(name: str) -> bool:
  """``frozen_fn`` for BAR tokenizer training: the pretrained SigLIP2 tower (``encoder.siglip.*``: embeddings,
  the frozen stack that makes ``clip_gt``, the pooling head) has ``requires_grad=False`` in the reference; the
  trainable copy, the quantiser and the decoder are optimised."""
  return name.startswith("encoder.siglip.")


def _dotted(path: tuple[str, ...]) -> str:
  return ".".join(str(p) for p in path)


def param_label(name: str, ndim: int, *, encoder_lr_mult: float = 1.0,
                frozen_fn: Callable[[str], bool] = is_not_optimised) -> str:
  """``frozen``, ``decay`` or ``no_decay``; with ``encoder_lr_mult != 1`` encoder parameters get a
  ``_encoder`` suffix (their own learning rate)."""
  if frozen_fn(name):
    return FROZEN
  label = NO_DECAY if no_weight_decay(name, ndim) else DECAY
  if encoder_lr_mult != 1.0 and ENCODER_SUBSTRING in name:
    label += "_encoder"
  return label


def param_labels(params: Any, *, name_fn: NameFn | None = None, encoder_lr_mult: float = 1.0,
                 frozen_fn: Callable[[str], bool] = is_not_optimised, stacked_fn: StackedFn | None = None) -> Any:
  """A tree like ``params`` (nested dicts) with each leaf's group label.

  ``stacked_fn(path)`` is True for leaves with a leading layer axis (scanned blocks); the reference's
  ``ndim < 2`` rule is applied to one layer of those.
  """
  name_fn = name_fn or _dotted
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      path: param_label(name_fn(path), len(leaf.shape) - int(bool(stacked_fn and stacked_fn(path))),
                        encoder_lr_mult=encoder_lr_mult, frozen_fn=frozen_fn)
      for path, leaf in flat.items()})


def weight_decay_mask(params: Any, *, name_fn: NameFn | None = None,
                      frozen_fn: Callable[[str], bool] = is_not_optimised, stacked_fn: StackedFn | None = None) -> Any:
  """Bool tree, True where AdamW decays the parameter (optax ``mask`` semantics)."""
  labels = param_labels(params, name_fn=name_fn, frozen_fn=frozen_fn, stacked_fn=stacked_fn)
  return traverse_util.unflatten_dict({p: lbl == DECAY for p, lbl in traverse_util.flatten_dict(labels).items()})


def trainable_mask(params: Any, *, name_fn: NameFn | None = None,
                   frozen_fn: Callable[[str], bool] = is_not_optimised, stacked_fn: StackedFn | None = None) -> Any:
  """Bool tree, True for every parameter the optimizer updates."""
  labels = param_labels(params, name_fn=name_fn, frozen_fn=frozen_fn, stacked_fn=stacked_fn)
  return traverse_util.unflatten_dict({p: lbl != FROZEN for p, lbl in traverse_util.flatten_dict(labels).items()})


def bar_lr_schedule(learning_rate: float, warmup_steps: int, total_steps: int, end_lr: float,
                    schedule_base_lr: float | None = None) -> optax.Schedule:
  """The reference ``cosine`` schedule (see the module docstring) as learning rates.

  ``schedule_base_lr`` is ``lr_scheduler.params.learning_rate`` (the ``base_lr``
  of the reference's lambda; the released yamls tie it to ``learning_rate``).
  """
  base = float(learning_rate if schedule_base_lr is None else schedule_base_lr)
  return cosine_with_minimum_schedule(float(learning_rate), int(warmup_steps), total_steps, float(end_lr) / base)


def _tree_of(labels: Any, predicate: Callable[[str], bool]) -> Any:
  flat = traverse_util.flatten_dict(labels)
  return traverse_util.unflatten_dict({p: bool(predicate(lbl)) for p, lbl in flat.items()})


def make_bar_optimizer(*, learning_rate: float, warmup_steps: int, total_steps: int, end_lr: float,
                       beta1: float = 0.9, beta2: float = 0.96, weight_decay: float = 0.03, eps: float = 1e-8,
                       max_grad_norm: float | None = 1.0, encoder_lr_mult: float = 1.0,
                       schedule_base_lr: float | None = None, gradient_accumulation_steps: int = 1,
                       name_fn: NameFn | None = None, frozen_fn: Callable[[str], bool] = is_not_optimised,
                       stacked_fn: StackedFn | None = None) -> optax.GradientTransformation:
  """AdamW with the reference's parameter groups, clipping and schedule (defaults: the BAR-B recipe's betas and
  decay; the schedule arguments are required).

  ``chain(zero frozen grads, clip_grad_norm_, adamw(mask=decay groups), x encoder_lr_mult on encoder
  params, zero frozen updates)``. The groups are masks recomputed from the param tree (names via
  ``name_fn``; ``stacked_fn`` marks scanned leaves, see ``param_labels``), so one transform serves any model size, and Adam's moments keep the params' tree
  structure (``sharding.optimizer_state_sharding`` shards them like the params). Scaling an
  encoder update by ``encoder_lr_mult`` is exactly AdamW with ``lr * encoder_lr_mult`` (decay included).
  """
  schedule = bar_lr_schedule(learning_rate, warmup_steps, total_steps, end_lr, schedule_base_lr)

  def labels_fn(params):
    return param_labels(params, name_fn=name_fn, encoder_lr_mult=encoder_lr_mult, frozen_fn=frozen_fn,
                        stacked_fn=stacked_fn)

  frozen = lambda params: _tree_of(labels_fn(params), lambda lbl: lbl == FROZEN)
  decayed = lambda params: _tree_of(labels_fn(params), lambda lbl: lbl.startswith(DECAY))
  encoder = lambda params: _tree_of(labels_fn(params), lambda lbl: lbl.endswith("_encoder"))

  parts = [optax.masked(optax.set_to_zero(), frozen)]
  if max_grad_norm is not None:
    parts.append(clip_by_global_norm_torch(float(max_grad_norm)))
  parts.append(optax.adamw(learning_rate=schedule, b1=float(beta1), b2=float(beta2), eps=float(eps),
                           weight_decay=float(weight_decay), mask=decayed))
  if encoder_lr_mult != 1.0:
    parts.append(optax.masked(optax.scale(float(encoder_lr_mult)), encoder))
  parts.append(optax.masked(optax.set_to_zero(), frozen))
  tx = optax.chain(*parts)
  if int(gradient_accumulation_steps) < 1:
    raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
  if int(gradient_accumulation_steps) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(gradient_accumulation_steps)).gradient_transformation()
  return tx


def _cfg(config: Any, key: str, default: Any = _MISSING) -> Any:
  node = config
  for i, part in enumerate(key.split(".")):
    value = node.get(part, _MISSING) if hasattr(node, "get") else _MISSING
    if value is _MISSING:
      if default is not _MISSING:
        return default
      raise KeyError(f"config key {key!r} is missing (no {'.'.join(key.split('.')[:i + 1])!r})")
    node = value
  return node


def bar_optimizer_settings(config: Any) -> dict:
  """The keyword arguments of ``make_bar_optimizer`` from a config with the reference's yaml keys."""
  name = str(_cfg(config, "optimizer.name")).strip().lower()
  if name != "adamw":
    raise ValueError(f"optimizer.name {name!r} is not supported (BAR trains with 'adamw')")
  scheduler = str(_cfg(config, "lr_scheduler.scheduler"))
  if scheduler != "cosine":
    raise ValueError(f"lr_scheduler.scheduler {scheduler!r} is not supported (the BAR code only has 'cosine')")
  if str(_cfg(config, "training.mixed_precision", "no")).lower() == "fp16":
    raise ValueError("training.mixed_precision='fp16' (loss scaling) is not supported; use 'no' or 'bf16'")
  max_grad_norm = _cfg(config, "training.max_grad_norm", None)
  return dict(
      learning_rate=float(_cfg(config, "optimizer.params.learning_rate")),
      beta1=float(_cfg(config, "optimizer.params.beta1")),
      beta2=float(_cfg(config, "optimizer.params.beta2")),
      weight_decay=float(_cfg(config, "optimizer.params.weight_decay")),
      eps=float(_cfg(config, "optimizer.params.epsilon", 1e-8)),
      warmup_steps=int(_cfg(config, "lr_scheduler.params.warmup_steps")),
      end_lr=float(_cfg(config, "lr_scheduler.params.end_lr")),
      schedule_base_lr=float(_cfg(config, "lr_scheduler.params.learning_rate",
                                  _cfg(config, "optimizer.params.learning_rate"))),
      total_steps=int(_cfg(config, "training.max_train_steps")),
      max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
      gradient_accumulation_steps=int(_cfg(config, "training.gradient_accumulation_steps", 1)),
      encoder_lr_mult=float(_cfg(config, "model.vq_model.encoder_lr_mult", 1.0)),
  )


def make_bar_optimizer_from_config(config: Any, *, name_fn: NameFn | None = None) -> optax.GradientTransformation:
  """``make_bar_optimizer`` with every setting read from ``config`` (reference yaml keys)."""
  return make_bar_optimizer(**bar_optimizer_settings(config), name_fn=name_fn)


def bar_schedule_from_config(config: Any) -> optax.Schedule:
  """The learning rate (of the base group) per optimizer step, for logging."""
  s = bar_optimizer_settings(config)
  return bar_lr_schedule(s["learning_rate"], s["warmup_steps"], s["total_steps"], s["end_lr"], s["schedule_base_lr"])


def rar_anneal_steps(config: Any) -> tuple[int, int]:
  """``(model.generator.randomness_anneal_start, randomness_anneal_end)`` for ``bar_masking.rar_random_ratio``."""
  return (int(_cfg(config, "model.generator.randomness_anneal_start")),
          int(_cfg(config, "model.generator.randomness_anneal_end")))
