"""Optimizers, learning-rate schedules and weight EMA of the reference training scripts.

What the reference does (``scripts/train_tokenizer.py``, ``scripts/train_maskbit.py``,
``utils/lr_schedulers.py``, ``modeling/modules/ema_model.py``) and how it maps here:

* Optimizer: ``torch.optim.AdamW`` over ONE parameter group holding every
  parameter, so weight decay reaches biases, norm scales, the codebook and the
  embeddings alike. ``make_optimizer`` therefore decays everything by default;
  ``weight_decay_mask`` exists only for deliberate deviations.
* Clipping: ``clip_grad_norm_`` on the (accumulated) gradient of the optimizer
  step, scale ``max_norm / (norm + 1e-6)`` capped at 1 (``clip_by_global_norm_torch``;
  optax's own clip has no ``1e-6``).
* Accumulation: Accelerate divides the loss by ``k`` and steps once per ``k``
  micro-batches, so the step sees the mean gradient; the scheduler ticks only
  on real steps. ``optax.MultiSteps`` around the whole chain does the same.
* Schedules are ``LambdaLR`` multipliers. Under Accelerate the scheduler ticks
  ``num_processes`` times per step while warm-up and total are multiplied by
  ``num_processes``, which cancels: optimizer step ``k`` (0-based) uses
  multiplier ``f(k)`` with the yaml's warm-up and ``max_train_steps``. Step 0
  uses ``f(0) = 0``: the first update moves nothing (AdamW's decay is scaled by
  the learning rate too) but does fill Adam's moments. optax passes the count
  before the update to the schedule, so ``schedule(k)`` is exactly that.
* The discriminator's scheduler only ticks when the discriminator trains
  (from ``losses.discriminator_start``), and its total is
  ``max_train_steps * P - discriminator_start`` ticks, i.e.
  ``max_train_steps - discriminator_start / P`` of its own steps. Its optax
  state must only be updated on steps where the discriminator trains, so that
  its count is its own step counter.
* ``scale_lr`` (tokenizer script only; the generator script never reads it)
  multiplies both learning rates by the total batch size
  ``per_gpu_batch_size * num_processes * gradient_accumulation_steps``.
* EMA: ``EMAModel(params, decay=0.999)`` in both scripts, no warm-up flag; it
  tracks parameters only (no buffers) and updates after every optimizer step.

Schedules and EMA factors are computed in float32 from the integer step, so
they may be traced inside a ``jit``-ed train step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "KINDS", "SCHEDULERS", "clip_by_global_norm_torch", "constant_with_warmup_schedule",
    "cosine_with_minimum_schedule", "ema_decay", "ema_update", "make_optimizer", "make_schedule",
    "reference_schedule",
]

SCHEDULERS = ("linear", "cosine", "cosine_with_minimum", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup")
# "generator": the tokenizer (VQGAN+ autoencoder); "discriminator": the
# tokenizer's GAN discriminator; "mlm": the MaskBit transformer (train_maskbit.py).
KINDS = ("generator", "discriminator", "mlm")

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds this to the norm

_MISSING = object()


# ---------------------------------------------------------------------------
# Config access


def _cfg(config: Any, key: str, default: Any = _MISSING) -> Any:
  """``config['a']['b']...`` for a dotted key via ``.get``, so ConfigDicts,
  OmegaConf configs and plain dicts all work; a missing key names itself."""
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts):
    value = node.get(part, _MISSING) if hasattr(node, "get") else _MISSING
    if value is _MISSING:
      if default is not _MISSING:
        return default
      where = ".".join(parts[:i + 1])
      detail = "" if where == key else f" (no {where!r})"
      raise KeyError(f"config key {key!r} is missing{detail}")
    node = value
  return node


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown optimizer kind {kind!r}; choose one of {KINDS}")


# ---------------------------------------------------------------------------
# Learning-rate schedules (reference utils/lr_schedulers.py)


def _f32(step) -> jax.Array:
  return jnp.asarray(step).astype(jnp.float32)


def _warmup(s: jax.Array, warmup_steps: float) -> jax.Array:
  return s / jnp.float32(max(1.0, float(warmup_steps)))


def _progress(s: jax.Array, warmup_steps: float, total_steps: float) -> jax.Array:
  # Numerator and denominator are integers below 2**24 for any real run, hence
  # exact in float32; the quotient is the one rounding.
  return (s - jnp.float32(warmup_steps)) / jnp.float32(max(1.0, float(total_steps) - float(warmup_steps)))


def _half_cosine(progress: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jnp.cos(jnp.float32(math.pi) * progress))


def _cosine_factor(step, warmup_steps: float, total_steps: float) -> jax.Array:
  """``(1 + cos(pi p)) / 2`` after warm-up, ``p = (step - warmup) / max(1, total - warmup)``.

  Evaluated as ``cos^2(pi p / 2)`` up to ``p = 1/2`` and ``sin^2(pi (1 - p) / 2)``
  after it, with ``1 - p`` taken from the integer distance to the end: the direct
  form cancels catastrophically in ``1 + cos`` near the floor, which costs the
  ``cosine_with_minimum`` multiplier up to 3.4e-7 relative in float32 (this form:
  about 2.6e-7 at worst, within 1e-7 for ~95% of steps, against float64).
  """
  span = max(1.0, float(total_steps) - float(warmup_steps))
  end = float(warmup_steps) + span  # == total_steps unless the span was clamped to 1
  end_int = math.floor(end)
  angle = math.pi / (2.0 * span)  # radians per step, as float32 hi + lo
  angle_hi = float(np.float32(angle))
  angle_lo = float(np.float32(angle - angle_hi))
  s = jnp.asarray(step).astype(jnp.int32)
  done = (s - int(warmup_steps)).astype(jnp.float32)  # steps since warm-up
  left = (end_int - s).astype(jnp.float32) + jnp.float32(end - end_int)  # steps to the end
  head = done <= left
  x = jnp.where(head, done, left)
  phi = x * jnp.float32(angle_hi) + x * jnp.float32(angle_lo)
  return jnp.where(head, jnp.square(jnp.cos(phi)), jnp.square(jnp.sin(phi)))


def _with_warmup(warmup_steps: float, after: Callable[[jax.Array], jax.Array], *,
                 pass_step: bool = False) -> Callable[[Any], jax.Array]:
  """Linear warm-up ``step / max(1, warmup)`` below ``warmup``, then ``after``
  (given the float32 step, or the integer step with ``pass_step``)."""
  def multiplier(step) -> jax.Array:
    s = _f32(step)
    return jnp.where(s < warmup_steps, _warmup(s, warmup_steps), after(step if pass_step else s))
  return multiplier


def _scaled(base_lr: float, multiplier: Callable[[Any], jax.Array]) -> optax.Schedule:
  base = float(base_lr)

  def schedule(count) -> jax.Array:
    return jnp.float32(base) * multiplier(count)
  return schedule


def cosine_with_minimum_schedule(base_lr: float, warmup_steps: int, total_steps: float,
                                 min_factor: float = 0.1) -> optax.Schedule:
  """The reference ``cosine_with_minimum`` schedule: linear warm-up from 0, then a
  half cosine from ``base_lr`` down to ``min_factor * base_lr``.

  After warm-up the multiplier is ``c + m - m * c`` with ``c = (1 + cos(pi p)) / 2``,
  ``p = (step - warmup) / max(1, total - warmup)``. ``p`` is NOT clamped, as in the
  reference: past ``total_steps`` the cosine rises again (1.4M of 1.35M steps gives
  0.103, not 0.1), which matters for a run extended past its planned length.
  ``total_steps`` may be fractional (the discriminator's, see ``make_schedule``).
  """
  m = float(min_factor)

  def after(s):
    # The reference's c + m - m * c, as m + (1 - m) * c (one rounding fewer).
    c = _cosine_factor(s, warmup_steps, total_steps)
    return jnp.maximum(0.0, jnp.float32(m) + jnp.float32(1.0 - m) * c)
  return _scaled(base_lr, _with_warmup(warmup_steps, after, pass_step=True))


def constant_with_warmup_schedule(base_lr: float, warmup_steps: int) -> optax.Schedule:
  """The reference ``constant_with_warmup``: linear warm-up from 0, then ``base_lr``."""
  return _scaled(base_lr, _with_warmup(warmup_steps, lambda s: jnp.ones_like(s)))


def reference_schedule(name: str, base_lr: float, *, warmup_steps: int | None = None,
                       total_steps: float | None = None, minimum_rate: float = 0.1, num_cycles: int = 1,
                       power: float = 1.0, lr_end: float = 1e-7) -> optax.Schedule:
  """Any of the reference's ``get_scheduler`` names as an optax schedule.

  Same requirements as the reference: every name but ``constant`` needs
  ``warmup_steps``, every name but those two needs ``total_steps``.
  ``minimum_rate`` defaults to 0.1 because the scripts never pass it.
  """
  if name not in SCHEDULERS:
    raise ValueError(f"unknown lr scheduler {name!r}; choose one of {SCHEDULERS}")
  if name == "constant":
    return _scaled(base_lr, lambda step: jnp.ones_like(_f32(step)))
  if warmup_steps is None:
    raise ValueError(f"lr scheduler {name!r} requires warmup_steps")
  if name == "constant_with_warmup":
    return constant_with_warmup_schedule(base_lr, warmup_steps)
  if total_steps is None:
    raise ValueError(f"lr scheduler {name!r} requires total_steps")
  if name == "cosine_with_minimum":
    return cosine_with_minimum_schedule(base_lr, warmup_steps, total_steps, minimum_rate)
  w, t = float(warmup_steps), float(total_steps)
  if name == "linear":
    after = lambda s: jnp.maximum(0.0, (jnp.float32(t) - s) / jnp.float32(max(1.0, t - w)))
  elif name == "cosine":
    after = lambda step: _cosine_factor(step, w, t)
    return _scaled(base_lr, _with_warmup(w, after, pass_step=True))
  elif name == "cosine_with_restarts":
    def after(s):
      p = _progress(s, w, t)
      c = jnp.maximum(0.0, _half_cosine(jnp.mod(jnp.float32(num_cycles) * p, 1.0)))
      return jnp.where(p >= 1.0, 0.0, c)
  else:  # polynomial: decays to lr_end (absolute), stays there past total_steps
    if not base_lr > lr_end:
      raise ValueError(f"lr_end ({lr_end}) must be smaller than the initial lr ({base_lr})")
    if t <= w:
      raise ValueError("polynomial schedule needs total_steps > warmup_steps")
    lr_range = float(base_lr) - lr_end

    def after(s):
      remaining = 1.0 - (s - jnp.float32(w)) / jnp.float32(t - w)
      decayed = (jnp.float32(lr_range) * jnp.maximum(remaining, 0.0) ** power + lr_end) / base_lr
      return jnp.where(s > t, jnp.float32(lr_end / base_lr), decayed)
  return _scaled(base_lr, _with_warmup(w, after))


def _base_learning_rate(config: Any, kind: str, total_batch_size: int | None) -> float:
  key = "optimizer.params.discriminator_learning_rate" if kind == "discriminator" else \
      "optimizer.params.learning_rate"
  lr = float(_cfg(config, key))
  if kind == "mlm":
    return lr  # train_maskbit.py has no scale_lr
  if _cfg(config, "optimizer.params.scale_lr"):
    if total_batch_size is None:
      raise ValueError("optimizer.params.scale_lr is set: pass total_batch_size "
                       "(per-device batch x devices x gradient_accumulation_steps)")
    lr *= int(total_batch_size)
  return lr


def make_schedule(config: Any, *, kind: str = "generator", total_batch_size: int | None = None,
                  num_processes: int = 1) -> optax.Schedule:
  """The learning-rate schedule of one optimizer, in optimizer steps.

  Reads ``lr_scheduler.scheduler``, ``lr_scheduler.params.warmup_steps``,
  ``training.max_train_steps``, the learning rate of ``kind`` and (tokenizer
  kinds) ``optimizer.params.scale_lr``; the discriminator also reads
  ``losses.discriminator_start``. ``lr_scheduler.params.minimum_rate`` (not in
  the reference yamls) overrides the floor of ``cosine_with_minimum``.

  ``num_processes`` only matters for the discriminator: its reference total is
  ``max_train_steps - discriminator_start / num_processes`` of its own steps, so
  pass the process count of the reference run being reproduced (default 1:
  exactly ``max_train_steps - discriminator_start``).
  """
  _check_kind(kind)
  name = str(_cfg(config, "lr_scheduler.scheduler"))
  warmup = int(_cfg(config, "lr_scheduler.params.warmup_steps"))
  total: float = int(_cfg(config, "training.max_train_steps"))
  if kind == "discriminator":
    total = total - int(_cfg(config, "losses.discriminator_start")) / int(num_processes)
  minimum_rate = float(_cfg(config, "lr_scheduler.params.minimum_rate", 0.1))
  return reference_schedule(name, _base_learning_rate(config, kind, total_batch_size), warmup_steps=warmup,
                            total_steps=total, minimum_rate=minimum_rate)


# ---------------------------------------------------------------------------
# Optimizer


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``.

  Unlike ``optax.clip_by_global_norm`` the scale has the reference's ``1e-6``, so
  a clipped gradient ends slightly below ``max_norm`` just as in PyTorch.
  """
  max_norm = float(max_norm)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    leaves = jax.tree_util.tree_leaves(updates)
    if not leaves:
      return updates, state
    sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
    coef = jnp.minimum(jnp.float32(max_norm) / (jnp.sqrt(sq) + CLIP_EPS), 1.0)
    return jax.tree_util.tree_map(lambda g: (g * coef).astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: Any, *, kind: str = "generator", total_batch_size: int | None = None,
                   num_processes: int = 1, weight_decay_mask: Any = None) -> optax.GradientTransformation:
  """AdamW of the reference scripts for one of ``KINDS``, as an optax transform.

  ``clip (training.max_grad_norm, None = off) -> AdamW (optimizer.params.beta1,
  beta2, weight_decay, epsilon; lr from make_schedule)``, wrapped in
  ``optax.MultiSteps`` when ``training.gradient_accumulation_steps > 1`` (the
  clip then sees the mean gradient, as Accelerate's clip on the sync step).

  Weight decay goes to every parameter, as the reference's single AdamW
  parameter group does; ``weight_decay_mask`` (optax ``mask`` semantics) is a
  deliberate deviation for experiments only. The discriminator shares the
  generator's betas, weight decay and epsilon.
  """
  _check_kind(kind)
  name = str(_cfg(config, "optimizer.name")).strip().lower()
  if name != "adamw":
    raise ValueError(f"optimizer.name {name!r} is not supported (the reference only has 'adamw')")
  if str(_cfg(config, "training.mixed_precision", "no")).lower() == "fp16":
    # Accelerate's fp16 path adds a GradScaler that skips steps on overflow
    # (and with them scheduler ticks); nothing here reproduces that.
    raise ValueError("training.mixed_precision='fp16' (loss scaling) is not supported; use 'no' or 'bf16'")
  schedule = make_schedule(config, kind=kind, total_batch_size=total_batch_size, num_processes=num_processes)
  adamw = optax.adamw(
      learning_rate=schedule,
      b1=float(_cfg(config, "optimizer.params.beta1")),
      b2=float(_cfg(config, "optimizer.params.beta2")),
      eps=float(_cfg(config, "optimizer.params.epsilon")),
      weight_decay=float(_cfg(config, "optimizer.params.weight_decay")),
      mask=weight_decay_mask,
  )
  max_grad_norm = _cfg(config, "training.max_grad_norm")
  parts = [] if max_grad_norm is None else [clip_by_global_norm_torch(float(max_grad_norm))]
  tx = optax.chain(*parts, adamw)
  accum = int(_cfg(config, "training.gradient_accumulation_steps"))
  if accum < 1:
    raise ValueError(f"training.gradient_accumulation_steps must be >= 1, got {accum}")
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
  return tx


# ---------------------------------------------------------------------------
# EMA of the weights (reference EMAModel)


def _ema_count(step, update_after_step: int) -> jax.Array:
  # The reference's max(0, step - update_after_step - 1), in integers first.
  s = jnp.asarray(step) - (int(update_after_step) + 1)
  return jnp.maximum(s, 0).astype(jnp.float32)


def ema_decay(step, decay: float = 0.999, *, min_decay: float = 0.0, update_after_step: int = 0,
              use_ema_warmup: bool = False, inv_gamma: float = 1.0, power: float = 2 / 3) -> jax.Array:
  """Decay the reference ``EMAModel.get_decay`` uses at ``step``, in float32.

  ``step`` is the EMA's ``optimization_step`` AFTER its increment, i.e. the
  number of optimizer steps taken including the one just applied. With
  ``s = max(0, step - update_after_step - 1)``: 0 when ``s == 0`` (the first
  update copies the weights; this early return skips ``min_decay``), else
  ``(1 + s) / (10 + s)`` (or ``1 - (1 + s / inv_gamma) ** -power`` with
  warm-up), capped at ``decay`` and then floored at ``min_decay``.
  """
  s = _ema_count(step, update_after_step)
  if use_ema_warmup:
    d = 1.0 - (1.0 + s / jnp.float32(inv_gamma)) ** jnp.float32(-power)
  else:
    d = (1.0 + s) / (10.0 + s)
  d = jnp.maximum(jnp.minimum(d, jnp.float32(decay)), jnp.float32(min_decay))
  return jnp.where(s <= 0, jnp.float32(0.0), d)


def _ema_one_minus_decay(step, decay, min_decay, update_after_step, use_ema_warmup, inv_gamma, power):
  """``1 - decay`` rounded as the reference's update sees it.

  The reference forms ``1 - decay`` in float64 and the float32 update rounds it
  once. ``1 - float32(decay)`` would differ (``1 - f32(0.999)`` is off by 1.3e-5
  relative), so the complement is computed directly: ``9 / (10 + s)`` is one
  correctly rounded float32 division, and the caps use float64 constants.
  """
  s = _ema_count(step, update_after_step)
  if use_ema_warmup:
    omd = (1.0 + s / jnp.float32(inv_gamma)) ** jnp.float32(-power)
  else:
    omd = 9.0 / (10.0 + s)
  omd = jnp.minimum(jnp.maximum(omd, jnp.float32(1.0 - decay)), jnp.float32(1.0 - min_decay))
  return jnp.where(s <= 0, jnp.float32(1.0), omd)


def ema_update(ema_params: Any, params: Any, step, decay: float = 0.999, *, min_decay: float = 0.0,
               update_after_step: int = 0, update_every: int = 1, use_ema_warmup: bool = False,
               inv_gamma: float = 1.0, power: float = 2 / 3) -> Any:
  """One reference ``EMAModel.step``: returns the new EMA pytree.

  Call it after optimizer step number ``step`` (1-based: ``global_step + 1``;
  after a resume, the restored step count plus one, as ``set_step`` does), with
  ``ema_params`` initialised to a copy of the initial parameters. Per leaf
  ``ema - (1 - d) * (ema - p)``, the reference's float order; the first update
  (``d = 0``) therefore yields ``p`` itself. When ``(step - 1) % update_every``
  is non-zero the EMA is returned unchanged. Only parameters belong here: the
  reference's EMA never tracks buffers (batch statistics, LeCam EMAs).
  """
  omd = _ema_one_minus_decay(step, decay, min_decay, update_after_step, use_ema_warmup, inv_gamma, power)

  def leaf(e, p):
    return e - omd.astype(e.dtype) * (e - p.astype(e.dtype))

  new = jax.tree_util.tree_map(leaf, ema_params, params)
  if int(update_every) > 1:
    active = (jnp.asarray(step) - 1) % int(update_every) == 0
    new = jax.tree_util.tree_map(lambda n, e: jnp.where(active, n, e), new, ema_params)
  return new
