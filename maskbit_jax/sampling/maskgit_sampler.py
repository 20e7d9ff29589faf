"""MaskGIT-style iterative decoding of the MaskBit generator, compiled as one ``lax.scan``.

Reproduces the reference ``sample()`` (``modeling/modules/sampling.py``) step by
step; only its two random draws are re-expressed so that stored noise can be
replayed (README of the golden fixtures, section 5):

* token draw: ``argmax(log(probs) + g_cat)`` (Gumbel-max, the same distribution
  as the reference's ``Categorical(probs).sample()``);
* confidence noise: ``g_conf * randomize_temperature * (1 - p)``.

``g_cat [B, N, M, C]`` and ``g_conf [B, N, M]`` of step ``i`` are standard
Gumbel draws from ``fold_in(key, i)``, or slices of ``cat_gumbel_noise`` /
``conf_gumbel_noise`` when those are given.

One step ``i`` of ``S`` (progress ``p = (i + 1) / S``), images ``b``:

1. logits from ``logits_fn`` (with guidance one call on ``[cond; uncond]``,
   then ``cond + scale (cond - uncond)``);
2. ``probs = softmax(logits / T)``, draw, put the already-known tokens back;
3. confidence ``log(prob of the chosen token) + noise``, ``+inf`` where known;
4. ``k = floor(mask_ratio(p) N M)`` clamped to ``[1, n - 1]``, ``n`` = masked
   entries of the FIRST image; every entry whose confidence is <= the k-th
   smallest of its image is masked again.

The tokens predicted at the last step (every entry filled) are the result.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax.sampling import schedules

# (tokens [B', N, M] int32, labels [B'] int32, drop_label_mask [B'] bool, step int32 []) -> [B', N, M, C]
LogitsFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

TRACE_KEYS = ("model_in_tokens", "model_in_labels", "model_in_drop", "model_logits", "probs",
              "sampled_raw", "predicted_tokens", "num_masked_in")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static (hashable) settings of one compiled sampler; see ``sample_tokens``."""

  num_steps: int
  num_positions: int
  codebook_splits: int
  mask_token: int
  guidance_scale: float = 0.0
  guidance_annealing: str = "none"
  scale_pow: float = 4.0
  softmax_temperature: float = 1.0
  use_sampling_annealing: bool = False
  randomize_temperature: float = 4.5
  mask_schedule_strategy: str = "arccos"
  null_label: int | None = None

  def __post_init__(self):
    if not float(self.num_steps).is_integer() or self.num_steps < 1:
      raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
    schedules.check_finite_settings(guidance_scale=self.guidance_scale, scale_pow=self.scale_pow,
                                    softmax_temperature=self.softmax_temperature,
                                    randomize_temperature=self.randomize_temperature)
    for name in ("num_positions", "codebook_splits", "mask_token"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
    schedules.check_mask_schedule(self.mask_schedule_strategy)
    schedules.check_guidance_annealing(self.guidance_annealing)
    if not self.use_sampling_annealing and self.softmax_temperature <= 0:
      raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature!r}")

  @property
  def guided(self) -> bool:
    # The reference switches on the scale itself: 0 means one plain conditional call.
    return self.guidance_scale != 0.0

  @property
  def num_maskable(self) -> int:
    return self.num_positions * self.codebook_splits


def sample_tokens(
    logits_fn: LogitsFn,
    labels,
    key: jax.Array | None,
    *,
    num_steps: int,
    num_positions: int,
    codebook_splits: int,
    mask_token: int,
    guidance_scale: float = 0.0,
    guidance_annealing: str = "none",
    scale_pow: float = 4.0,
    softmax_temperature: float = 1.0,
    use_sampling_annealing: bool = False,
    randomize_temperature: float = 4.5,
    mask_schedule_strategy: str = "arccos",
    null_label: int | None = None,
    cat_gumbel_noise=None,
    conf_gumbel_noise=None,
    return_trace: bool = False,
    nclass: int | None = None,
    known_tokens=None,
    known_bits=None,
):
  """Samples split tokens ``[B, N, M]`` (int32, each in ``[0, mask_token)``) for ``labels [B]``.

  Args:
    logits_fn: ``(tokens [B', N, M] int32, labels [B'] int32, drop_label_mask [B'] bool,
      step int32 []) -> logits [B', N, M, C]`` with ``C = mask_token``; masked
      entries of ``tokens`` hold ``mask_token``. With guidance ``B' = 2B``
      (conditional copies, then unconditional ones with the drop mask set) and
      it is called once per step; without guidance ``B' = B``, no label dropped.
    labels: class labels ``[B]``.
    key: PRNG key for the per-step draws (``fold_in(key, step)``); may be None
      only when both noise arrays are given.
    num_steps, num_positions, codebook_splits, mask_token: ``S``, ``N``, ``M``, ``C``.
    guidance_scale, guidance_annealing, scale_pow: classifier-free guidance; 0
      disables it (see ``schedules.guidance_multiplier``).
    softmax_temperature, use_sampling_annealing: the softmax temperature, or
      ``0.5 + 0.8 (1 - p)`` when annealing.
    randomize_temperature: scale of the Gumbel noise on the confidences.
    mask_schedule_strategy: one of ``schedules.MASK_SCHEDULES``.
    null_label: when given, written into the labels of the unconditional rows
      before ``logits_fn`` sees them (the reference model does this itself;
      a ``logits_fn`` that honours the drop mask does not need it).
    cat_gumbel_noise, conf_gumbel_noise: ``[S, B, N, M, C]`` / ``[S, B, N, M]``
      noise to use instead of drawing it (replay of stored traces).
    return_trace: also return per-step arrays stacked over steps (``TRACE_KEYS``).
    nclass: when given and ``labels`` is concrete, labels must lie in
      ``[0, nclass)``. Labels traced under an outer ``jit`` are not checked;
      the caller validates them there.
    known_tokens, known_bits: ``[B, N, M]`` int32, both or neither (editing):
      ``known_bits`` is the bit mask of the bits of each entry that are fixed to
      those of ``known_tokens``. An entry with every bit fixed (``C - 1``) is
      known from step 0: never masked, never re-masked, and the schedule's
      counts are those of the other entries of its image (per image). The other
      entries are sampled as usual with the values that disagree with their
      fixed bits excluded (logit ``-inf`` after guidance). With no bit fixed the
      draws are those of the plain sampler for the same key.

  Returns:
    tokens ``[B, N, M]`` int32, or ``(tokens, trace)`` with ``return_trace``.

  The whole loop is one ``lax.scan`` in one jitted function; the settings are
  static, ``logits_fn`` is a static argument keyed by identity (reuse the same
  object to reuse the compiled sampler). It may also be called inside the
  caller's own ``jit`` with a ``logits_fn`` that closes over traced parameters.
  """
  cfg = SamplerConfig(
      num_steps=int(num_steps), num_positions=int(num_positions), codebook_splits=int(codebook_splits),
      mask_token=int(mask_token), guidance_scale=float(guidance_scale),
      guidance_annealing=guidance_annealing, scale_pow=float(scale_pow),
      softmax_temperature=float(softmax_temperature), use_sampling_annealing=bool(use_sampling_annealing),
      randomize_temperature=float(randomize_temperature), mask_schedule_strategy=mask_schedule_strategy,
      null_label=None if null_label is None else int(null_label))
  labels = _check_labels(labels, nclass)
  batch = labels.shape[0]
  s, n, m, c = cfg.num_steps, cfg.num_positions, cfg.codebook_splits, cfg.mask_token
  cat_gumbel_noise = _check_noise(cat_gumbel_noise, (s, batch, n, m, c), "cat_gumbel_noise")
  conf_gumbel_noise = _check_noise(conf_gumbel_noise, (s, batch, n, m), "conf_gumbel_noise")
  if key is None and (cat_gumbel_noise is None or conf_gumbel_noise is None):
    raise ValueError("sample_tokens needs a key unless both noise arrays are given")
  known = _check_known(known_tokens, known_bits, (batch, n, m), c)
  tokens, trace = _sample_jit(logits_fn, labels, key, cat_gumbel_noise, conf_gumbel_noise, known,
                              cfg=cfg, return_trace=bool(return_trace))
  return (tokens, trace) if return_trace else tokens


def _check_labels(labels, nclass: int | None) -> jax.Array:
  if not isinstance(labels, jax.core.Tracer):
    labels_np = np.asarray(labels)
    if not np.issubdtype(labels_np.dtype, np.integer):
      raise ValueError(f"labels must be integers, got dtype {labels_np.dtype}")
    if nclass is not None and labels_np.size and (labels_np.min() < 0 or labels_np.max() >= nclass):
      raise ValueError(f"labels must lie in [0, {nclass}), got range "
                       f"[{labels_np.min()}, {labels_np.max()}]")
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape [B], got {labels.shape}")
  return labels.astype(jnp.int32)


def _check_noise(noise, shape: tuple[int, ...], name: str):
  if noise is None:
    return None
  noise = jnp.asarray(noise, jnp.float32)
  if noise.shape != shape:
    raise ValueError(f"{name} must have shape {shape} ([S, B, N, M(, C)]), got {noise.shape}")
  return noise


def _check_known(known_tokens, known_bits, shape: tuple[int, ...], c: int):
  """``(tokens, bit mask)`` as int32 ``[B, N, M]``, or None; a ValueError naming a wrong shape or range."""
  if (known_tokens is None) != (known_bits is None):
    raise ValueError("known_tokens and known_bits go together: give both or neither")
  if known_tokens is None:
    return None
  out = []
  for name, x in (("known_tokens", known_tokens), ("known_bits", known_bits)):
    if tuple(np.shape(x)) != shape:
      raise ValueError(f"{name} must have shape {shape} ([B, N, M]), got {tuple(np.shape(x))}")
    if not isinstance(x, jax.core.Tracer):
      values = np.asarray(x)
      if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {values.dtype}")
      if values.size and (values.min() < 0 or values.max() >= c):
        raise ValueError(f"{name} must lie in [0, {c}), got [{values.min()}, {values.max()}]")
    out.append(jnp.asarray(x, jnp.int32))
  return tuple(out)


def _remask_counts(ratio, masked_bnm, known_full):
  """Per image, how many entries stay masked (``k [B]``) when ``known_full [B, N, M]`` entries are fixed:
  the plain rule with the image's own counts (``floor(ratio * free)``, clamped to ``[1, masked - 1]``)."""
  free_b = jnp.sum(~known_full, axis=(1, 2), dtype=jnp.int32).astype(jnp.float32)
  masked_b = jnp.sum(masked_bnm, axis=(1, 2), dtype=jnp.int32)
  return jnp.minimum(jnp.maximum(jnp.floor(ratio * free_b), 1.0), (masked_b - 1).astype(jnp.float32)).astype(jnp.int32)


def _allowed_values(known, c: int) -> jax.Array:
  """``[B, N, M, C]`` bool: the values of every entry that agree with its fixed bits."""
  tokens, bits = known
  values = jnp.arange(c, dtype=jnp.int32)
  return ((values ^ tokens[..., None]) & bits[..., None]) == 0


@functools.partial(jax.jit, static_argnames=("logits_fn", "cfg", "return_trace"))
def _sample_jit(logits_fn, labels, key, cat_noise, conf_noise, known, *, cfg: SamplerConfig, return_trace: bool):
  batch = labels.shape[0]
  n, m, c = cfg.num_positions, cfg.codebook_splits, cfg.mask_token
  if cfg.guided:
    model_labels = jnp.concatenate([labels, labels])
    drop = jnp.concatenate([jnp.zeros((batch,), bool), jnp.ones((batch,), bool)])
  else:
    model_labels = labels
    drop = jnp.zeros((batch,), bool)
  if cfg.null_label is not None:
    model_labels = jnp.where(drop, jnp.int32(cfg.null_label), model_labels)
  known_full = None if known is None else known[1] == c - 1  # entries known from step 0

  def step_fn(carry, xs):
    masked_bnm, _ = carry
    step, g_cat, g_conf = xs
    if g_cat is None or g_conf is None:
      key_cat, key_conf = jax.random.split(jax.random.fold_in(key, step))
      if g_cat is None:
        g_cat = jax.random.gumbel(key_cat, (batch, n, m, c), jnp.float32)
      if g_conf is None:
        g_conf = jax.random.gumbel(key_conf, (batch, n, m), jnp.float32)
    progress = schedules.step_progress(step, cfg.num_steps)
    mask = masked_bnm == c
    num_masked_b = jnp.sum(mask, axis=(1, 2), dtype=jnp.int32)

    model_tokens = jnp.concatenate([masked_bnm, masked_bnm]) if cfg.guided else masked_bnm
    raw = logits_fn(model_tokens, model_labels, drop, step)
    expected = (model_tokens.shape[0], n, m, c)
    if raw.shape != expected:
      raise ValueError(f"logits_fn returned shape {raw.shape}, expected {expected} ([B', N, M, mask_token])")
    raw = raw.astype(jnp.float32)
    if cfg.guided:
      cond, uncond = raw[:batch], raw[batch:]
      scale = jnp.float32(cfg.guidance_scale) * schedules.guidance_multiplier(
          step, cfg.num_steps, cfg.guidance_annealing, cfg.scale_pow)
      logits = cond + scale * (cond - uncond)
    else:
      logits = raw
    if known is not None:
      logits = jnp.where(_allowed_values(known, c), logits, -jnp.inf)

    if cfg.use_sampling_annealing:
      temperature = schedules.annealed_softmax_temperature(progress)
    else:
      temperature = jnp.float32(cfg.softmax_temperature)
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    # log of the probabilities (not log_softmax): the reference's categorical
    # draw and its confidence both start from the probabilities.
    sampled = jnp.argmax(jnp.log(probs) + g_cat, axis=-1).astype(jnp.int32)
    predicted = jnp.where(mask, sampled, masked_bnm)

    chosen = jnp.take_along_axis(probs, predicted[..., None], axis=-1)[..., 0]
    confidence = jnp.log(jnp.where(mask, chosen, jnp.inf))
    # Same multiplication order as the reference: (g * temperature) * (1 - p).
    confidence = confidence + g_conf * jnp.float32(cfg.randomize_temperature) * schedules.noise_scale_factor(
        step, cfg.num_steps)

    ratio = schedules.masking_ratio(progress, cfg.mask_schedule_strategy)
    flat = confidence.reshape(batch, cfg.num_maskable)
    if known is None:
      mask_len = jnp.floor(ratio * jnp.float32(cfg.num_maskable))
      # Upper bound from the FIRST image only, applied after the lower bound (torch.clamp):
      # with n - 1 < 1 the upper bound wins, and k can reach 0.
      upper = (num_masked_b[0] - 1).astype(jnp.float32)
      k = jnp.minimum(jnp.maximum(mask_len, 1.0), upper).astype(jnp.int32)
      # Index k - 1 wraps like torch indexing: k = 0 picks the largest confidence.
      index = k - 1
      index = jnp.where(index < 0, index + cfg.num_maskable, index)
      threshold_b = jax.lax.dynamic_index_in_dim(jnp.sort(flat, axis=-1), index, axis=1, keepdims=False)
      remask = confidence <= threshold_b[:, None, None]
    else:
      # Images differ in how much they keep, so each gets its own count; with nothing kept every image's
      # count is the first image's, as above. Kept entries are never masked again, whatever the count.
      index = _remask_counts(ratio, mask, known_full) - 1
      index = jnp.where(index < 0, index + cfg.num_maskable, index)
      threshold_b = jnp.take_along_axis(jnp.sort(flat, axis=-1), index[:, None], axis=1)[:, 0]
      remask = (confidence <= threshold_b[:, None, None]) & ~known_full
    next_masked = jnp.where(remask, jnp.int32(c), predicted)

    out = None
    if return_trace:
      out = dict(model_in_tokens=model_tokens, model_in_labels=model_labels, model_in_drop=drop,
                 model_logits=raw, probs=probs, sampled_raw=sampled, predicted_tokens=predicted,
                 num_masked_in=num_masked_b)
    return (next_masked, predicted), out

  init = jnp.full((batch, n, m), c, jnp.int32)
  if known is not None:
    init = jnp.where(known_full, known[0], init)
  steps = jnp.arange(cfg.num_steps, dtype=jnp.int32)
  (_, tokens), trace = jax.lax.scan(step_fn, (init, jnp.zeros_like(init)), (steps, cat_noise, conf_noise))
  return tokens, trace
