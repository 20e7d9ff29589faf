"""BAR generation: raster-order AR steps with a key/value cache, the MBM head revealing each step's bits.

Reproduces the reference ``BAR.generate`` + ``MaskBitModelingHead.sample``
(README of the BAR golden fixtures, section 5). The prefix runs in one
cached pass, then ONE ``lax.scan`` runs the AR steps: per step the head's
inner loop (a nested ``lax.scan`` over the allocation), then one cached
backbone call on the new bits gives the next step's condition. The last
step's head loop runs after the scan, so no backbone call is wasted.

Inner step j of S at AR step a (k bits per step, allocation cumulative c_j):

1. the head sees the current bits (2 = masked) and ratio ``1 - c_j / k``;
2. with guidance (g > 1), conditional and null-class rows run as one batch
   and ``logits = uncond + s_a (cond - uncond)``, ``s_a = 1 + (g - 1) a / L``
   (step 0 purely conditional, g never reached);
3. ``tau_j = T (1 - j / S)``; ``sampled = argmax(logits + tau_j G)``, G Gumbel;
   bits fixed earlier keep their value;
4. for j < S-1: confidence = guided logit of the sampled class ``+ tau_j G'``
   (+inf for fixed bits); ``n = clip(round_half_even(k (1 - c_{j+1}/k)), 1,
   masked_in_row_0 - 1)``; every bit whose confidence is ``<=`` the n-th
   smallest of its row is masked again.

The uniforms behind G (``u_sample [B, k, 2]``) and G' (``u_conf [B, k]``) are
drawn for every bit at every inner step, ``G = -log(-log(u))`` with both logs
clamped at 1e-20. They come from ``fold_in(key, a)``, or from a ``noise``
tape ``{"u_sample": [L, S, B, k, 2], "u_conf": [L, S-1, B, k]}`` (replaying
stored reference draws).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax.models.bar_generator import BarGenerator, gather_steps, scatter_steps
from maskbit_jax.sampling import schedules

# (bits [N, k] int32 with 2 = masked, z [N, W], mask_ratio [N] float32) -> logits [N, k, 2]
HeadFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
GUMBEL_EPS = 1e-20


@dataclasses.dataclass(frozen=True)
class BarSamplingConfig:
  """Static (hashable) settings of one compiled sampler."""

  guidance_scale: float
  randomize_temperature: float
  tokens_allocation: tuple[int, ...]

  def check(self, bits: int) -> None:
    schedules.check_finite_settings(guidance_scale=self.guidance_scale,
                                    randomize_temperature=self.randomize_temperature)
    alloc = self.tokens_allocation
    if not alloc or any(int(t) != t or t <= 0 for t in alloc):
      raise ValueError(f"tokens_allocation must be positive integers, got {alloc}")
    if sum(alloc) != bits:
      raise ValueError(f"tokens_allocation must sum to the {bits} bits of an AR step, got {alloc} (sum {sum(alloc)})")
    if any(b < a for a, b in zip(alloc, alloc[1:])):
      raise ValueError(f"tokens_allocation must be non-decreasing, got {alloc}")

  @property
  def guided(self) -> bool:
    return self.guidance_scale > 1.0

  @property
  def num_inner_steps(self) -> int:
    return len(self.tokens_allocation)


def inner_schedule(cfg: BarSamplingConfig, bits: int) -> dict:
  """Per inner step: head mask ratio (float32, as the reference's tensor), temperature, and the
  re-mask target ``round_half_even(k * next_ratio)`` (float64 arithmetic, as the reference)."""
  cum = np.cumsum((0,) + tuple(cfg.tokens_allocation))
  s = cfg.num_inner_steps
  ratios = [1.0 - cum[j] / bits for j in range(s + 1)]
  return dict(ratio=np.asarray(ratios[:s], np.float32),
              temperature=[cfg.randomize_temperature * (1.0 - j / s) for j in range(s)],
              remask_target=[int(np.round(bits * ratios[j + 1])) for j in range(s - 1)])


def cfg_scales(cfg: BarSamplingConfig, num_steps: int) -> np.ndarray:
  """The guidance scale of every AR step ``1 + (g - 1) a / L`` (float64 as the reference, then float32)."""
  if not cfg.guided:
    return np.ones((num_steps,), np.float32)
  return np.asarray([1.0 + (cfg.guidance_scale - 1.0) * (a / num_steps) for a in range(num_steps)], np.float32)


def gumbel_from_uniform(u: jax.Array) -> jax.Array:
  return -jnp.log(jnp.maximum(-jnp.log(jnp.maximum(u, GUMBEL_EPS)), GUMBEL_EPS))


def _round_half_even_ratio(num: jax.Array, den: int) -> jax.Array:
  """``round_half_even(num / den)`` of non-negative int32 ``num`` in integers (no float rounding)."""
  q, r = num // den, num % den
  return q + ((2 * r > den) | ((2 * r == den) & (q % 2 == 1))).astype(jnp.int32)


def sample_step_bits(head_fn: HeadFn, z_nw: jax.Array, cfg_scale: jax.Array, u_sample: jax.Array,
                     u_conf: jax.Array, *, cfg: BarSamplingConfig, bits: int, mask_id: int = 2,
                     return_trace: bool = False, known=None):
  """The head's inner loop for one AR step: ``z [nB, W]`` -> bits ``[B, k]`` int32 (and a trace).

  ``u_sample [S, B, k, 2]``, ``u_conf [S-1, B, k]``: the uniforms of every inner
  step. With guidance ``nB = 2B`` (conditional rows first, then null-class ones).
  The S inner steps are one ``lax.scan`` (the head is compiled once); the last
  step's re-masking is computed on a dummy draw and discarded.

  ``known``: ``(values [B, k] int32, mask [B, k] bool)`` or None: the masked bits are revealed from the start,
  never masked again, and each row's re-mask count is the schedule's share of its own free bits
  (``round_half_even(free * (1 - c_{j+1} / k))``, in integers; equal to the plain count with nothing known).
  """
  sched = inner_schedule(cfg, bits)
  s = cfg.num_inner_steps
  n_rows = z_nw.shape[0]
  batch = n_rows // 2 if cfg.guided else n_rows
  u_conf = jnp.concatenate([u_conf, jnp.full((1, batch, bits), 0.5, jnp.float32)])
  xs = dict(ratio=jnp.asarray(sched["ratio"]), tau=jnp.asarray(sched["temperature"], jnp.float32),
            target=jnp.asarray(sched["remask_target"] + [1], jnp.int32), last=jnp.arange(s) == s - 1,
            left=jnp.asarray(bits - np.cumsum(cfg.tokens_allocation), jnp.int32), u_sample=u_sample, u_conf=u_conf)
  if known is not None:
    known_mask = known[1].astype(bool)
    free_b = jnp.sum(~known_mask, axis=-1, dtype=jnp.int32)

  def inner(ids, x):
    model_ids = jnp.concatenate([ids, ids]) if cfg.guided else ids
    raw = head_fn(model_ids, z_nw, jnp.full((n_rows,), x["ratio"], jnp.float32)).astype(jnp.float32)
    if cfg.guided:
      cond, uncond = raw[:batch], raw[batch:]
      logits = uncond + cfg_scale * (cond - uncond)
    else:
      logits = raw
    g = gumbel_from_uniform(x["u_sample"])
    noisy = logits + x["tau"] * g
    sampled = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
    chosen = jnp.take_along_axis(logits, sampled[..., None], axis=-1)[..., 0]
    is_mask = ids == mask_id
    new_ids = jnp.where(is_mask, sampled, ids)
    conf_base = jnp.where(is_mask, chosen, jnp.inf)
    g_conf = gumbel_from_uniform(x["u_conf"])
    confidence = conf_base + x["tau"] * g_conf
    if known is None:
      # Row 0's masked count bounds n for every row (reference quirk).
      n = jnp.maximum(1, jnp.minimum(jnp.sum(is_mask[0], dtype=jnp.int32) - 1, x["target"]))
      cutoff = jnp.take(jnp.sort(confidence, axis=-1), n - 1, axis=-1)
      remask = (confidence <= cutoff[:, None]) & ~x["last"]
    else:  # rows keep different bits: each row its own count; kept bits stay
      target_b = _round_half_even_ratio(free_b * x["left"], bits)
      n_b = jnp.maximum(1, jnp.minimum(jnp.sum(is_mask, axis=-1, dtype=jnp.int32) - 1, target_b))
      cutoff = jnp.take_along_axis(jnp.sort(confidence, axis=-1), n_b[:, None] - 1, axis=-1)[:, 0]
      remask = (confidence <= cutoff[:, None]) & ~x["last"] & ~known_mask
    out_ids = jnp.where(remask, jnp.int32(mask_id), new_ids)
    tr = None
    if return_trace:
      tr = dict(ids_in=ids, logits_raw=raw, guided_logits=logits, gumbel_sample=g, noisy_logits=noisy,
                sampled_raw=sampled, ids_after=out_ids, conf_base=conf_base, gumbel_conf=g_conf,
                confidence=confidence, is_mask_before=is_mask, remask=remask)
    return out_ids, tr

  init = jnp.full((batch, bits), mask_id, jnp.int32)
  if known is not None:
    init = jnp.where(known_mask, known[0].astype(jnp.int32), init)
  ids, tr = jax.lax.scan(inner, init, xs)
  if not return_trace:
    return ids, None
  for key in ("conf_base", "gumbel_conf", "confidence", "is_mask_before", "remask"):
    tr[key] = tr[key][: s - 1]   # the re-masking exists for j < S-1 only
  tr["mask_ratio"] = xs["ratio"]
  return ids, tr


def _check_noise(noise, num_steps, cfg, batch, bits):
  if noise is None:
    return None, None
  s = cfg.num_inner_steps
  u_sample = jnp.asarray(noise["u_sample"], jnp.float32)
  u_conf = jnp.asarray(noise["u_conf"], jnp.float32)
  if u_sample.shape != (num_steps, s, batch, bits, 2):
    raise ValueError(f"noise['u_sample'] must be [L, S, B, k, 2] = {(num_steps, s, batch, bits, 2)}, "
                     f"got {u_sample.shape}")
  if u_conf.shape != (num_steps, s - 1, batch, bits):
    raise ValueError(f"noise['u_conf'] must be [L, S-1, B, k] = {(num_steps, s - 1, batch, bits)}, got {u_conf.shape}")
  return u_sample, u_conf


def generate(module: BarGenerator, params: Any, labels, key: jax.Array | None = None, *, guidance_scale: float,
             randomize_temperature: float, tokens_allocation, orders=None, noise: dict | None = None,
             return_trace: bool = False, known_bits=None, known_mask=None):
  """Samples bits ``[B, cells*K]`` (int32, 0/1, cells row-major) for class ``labels [B]``.

  Args:
    module, params: the BAR generator and its (unboxed) params.
    labels: class labels in ``[0, num_classes)``.
    key: PRNG key for the draws (``fold_in(key, a)`` at AR step a); may be
      None when ``noise`` is given.
    guidance_scale, randomize_temperature, tokens_allocation: as the reference
      ``generate`` (``bar_config.bar_sampling_defaults`` has the released ones).
    orders: ``[B, L]`` generation order (default raster, as released sampling).
    noise: ``{"u_sample", "u_conf"}`` uniforms to replay instead of drawing.
    return_trace: also return the per-step arrays (names as the fixture's
      ``trace<t>_*``: ``head_conditions``, ``head_ids_in``, ``guided_logits``, ...).
    known_bits, known_mask: ``[B, cells*K]`` (0/1 and bool), both or neither
      (editing): the masked bits are teacher-forced to ``known_bits`` at their
      AR step (``sample_step_bits``' ``known``); the steps after them see them.
      Which sets make sense depends on ``orders`` (``maskbit_jax.edit``).
  Returns:
    bits, or ``(bits, trace)``.
  """
  cfg = BarSamplingConfig(float(guidance_scale), float(randomize_temperature),
                          tuple(int(t) for t in tokens_allocation))
  cfg.check(module.step_bits)
  labels_np = np.asarray(labels) if not isinstance(labels, jax.core.Tracer) else None
  if labels_np is not None:
    if labels_np.ndim != 1 or not np.issubdtype(labels_np.dtype, np.integer):
      raise ValueError(f"labels must be a 1-D integer array, got shape {labels_np.shape} dtype {labels_np.dtype}")
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= module.num_classes):
      raise ValueError(f"labels must lie in [0, {module.num_classes})")
  labels = jnp.asarray(labels, jnp.int32)
  batch = labels.shape[0]
  u_sample, u_conf = _check_noise(noise, module.num_steps, cfg, batch, module.step_bits)
  if key is None and u_sample is None:
    raise ValueError("generate needs a key unless noise is given")
  if orders is None:
    orders = jnp.broadcast_to(jnp.arange(module.num_steps, dtype=jnp.int32), (batch, module.num_steps))
  known = _check_known(known_bits, known_mask, (batch, module.image_seq_len * module.token_bits))
  bits, trace = _generate_jit(params, labels, key, u_sample, u_conf, jnp.asarray(orders, jnp.int32), known,
                              module=module, cfg=cfg, return_trace=bool(return_trace))
  return (bits, trace) if return_trace else bits


def _check_known(known_bits, known_mask, shape: tuple[int, int]):
  if (known_bits is None) != (known_mask is None):
    raise ValueError("known_bits and known_mask go together: give both or neither")
  if known_bits is None:
    return None
  for name, x in (("known_bits", known_bits), ("known_mask", known_mask)):
    if tuple(np.shape(x)) != shape:
      raise ValueError(f"{name} must have shape {shape} ([B, cells*K]), got {tuple(np.shape(x))}")
  return jnp.asarray(known_bits, jnp.int32), jnp.asarray(known_mask, bool)


@functools.partial(jax.jit, static_argnames=("module", "cfg", "return_trace"))
def _generate_jit(params, labels, key, u_sample, u_conf, orders, known, *, module: BarGenerator,
                  cfg: BarSamplingConfig, return_trace: bool):
  batch, steps, bits = labels.shape[0], module.num_steps, module.step_bits
  variables = {"params": params}
  cond_ids = module.condition_ids(labels)
  if cfg.guided:
    cond_ids = jnp.concatenate([cond_ids, jnp.full((batch,), module.none_condition_id, jnp.int32)])
    model_orders = jnp.concatenate([orders, orders])
  else:
    model_orders = orders
  n_rows = cond_ids.shape[0]
  scales = jnp.asarray(cfg_scales(cfg, steps))
  s = cfg.num_inner_steps

  def head_fn(ids, z, ratio):
    return module.apply(variables, ids, z, ratio, method=BarGenerator.head_logits)

  def draws(a, us, uc):
    if us is not None:
      return us, uc
    k_sample, k_conf = jax.random.split(jax.random.fold_in(key, a))
    return (jax.random.uniform(k_sample, (s, batch, bits, 2), jnp.float32),
            jax.random.uniform(k_conf, (s - 1, batch, bits), jnp.float32))

  # the known bits of every AR step, [L, B, k] in generation order (or None)
  known_steps = None if known is None else tuple(
      jnp.moveaxis(gather_steps(module.steps_from_bits(x), orders), 1, 0) for x in known)

  def head_step(a, z, us, uc):
    us, uc = draws(a, us, uc)
    step_known = None if known_steps is None else tuple(x[a] for x in known_steps)
    step_bits, tr = sample_step_bits(head_fn, z, scales[a], us, uc, cfg=cfg, bits=bits, mask_id=module.mask_id,
                                     return_trace=return_trace, known=step_known)
    if return_trace:
      tr = dict(tr, head_conditions=z, u_sample=us, u_conf=uc)
    return step_bits, tr

  z, cache = module.apply(variables, cond_ids, model_orders, module.init_cache(n_rows),
                          method=BarGenerator.prefill)

  def body(carry, xs):
    z, cache = carry
    a, us, uc = xs
    step_bits, tr = head_step(a, z, us, uc)
    model_bits = jnp.concatenate([step_bits, step_bits]) if cfg.guided else step_bits
    z, cache = module.apply(variables, model_bits, a, cond_ids, model_orders, cache, method=BarGenerator.decode)
    return (z, cache), (step_bits, tr)

  idx = jnp.arange(steps - 1, dtype=jnp.int32)
  xs = (idx, None if u_sample is None else u_sample[:-1], None if u_conf is None else u_conf[:-1])
  (z, _), (scan_bits, scan_trace) = jax.lax.scan(body, (z, cache), xs)
  last = steps - 1
  last_bits, last_trace = head_step(jnp.int32(last), z, None if u_sample is None else u_sample[last],
                                    None if u_conf is None else u_conf[last])
  steps_bits = jnp.concatenate([scan_bits, last_bits[None]])                 # [L, B, k]
  ids_gen = jnp.moveaxis(steps_bits, 0, 1)                                     # [B, L, k] generation order
  out = module.bits_from_steps(scatter_steps(ids_gen, orders))
  if not return_trace:
    return out, None
  tr = jax.tree.map(lambda x, y: jnp.concatenate([x, y[None]]), scan_trace, last_trace)
  trace = dict(head_conditions=tr["head_conditions"], head_ids_in=tr["ids_in"], head_mask_ratio=tr["mask_ratio"],
               guided_logits=tr["guided_logits"], gumbel_sample=tr["gumbel_sample"], noisy_logits=tr["noisy_logits"],
               sampled_raw=tr["sampled_raw"], conf_base=tr["conf_base"], gumbel_conf=tr["gumbel_conf"],
               confidence=tr["confidence"], is_mask_before=tr["is_mask_before"], remask=tr["remask"],
               ids_after_inner_step=tr["ids_after"], step_bits=steps_bits, cfg_scale=scales,
               ids_ar_order=ids_gen.reshape(batch, -1), final_tokens=out, u_sample=tr["u_sample"], u_conf=tr["u_conf"],
               condition_ids=cond_ids[:batch], model_condition_ids=cond_ids, orders=orders,
               temperature=jnp.asarray(inner_schedule(cfg, bits)["temperature"], jnp.float32))
  if cfg.guided:
    trace["logits_cond"], trace["logits_uncond"] = tr["logits_raw"][:, :, :batch], tr["logits_raw"][:, :, batch:]
  else:
    trace["logits"] = tr["logits_raw"]
  return out, trace
