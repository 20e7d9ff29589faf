"""Editing with bit tokens, the library: ``edit`` (inpainting, class-guided editing), ``outpaint`` (a larger
canvas) and ``vary`` (bit-level variations), for MaskBit and BAR (``python -m maskbit_jax.edit`` is the command).

    out = maskbit_jax.edit(gen, tok, images, keep_mask, [3, 5], jax.random.key(0))  # keep_mask: pixels or tokens
    out = maskbit_jax.vary(gen, tok, images, 8, [3, 3], jax.random.key(0))           # every token keeps 8 high bits
    out = maskbit_jax.outpaint(gen, tok, images, [3], key, pad=(0, 4, 0, 0))         # 4 token rows below

The images are encoded, the kept tokens (or kept bits of every token) are fixed and the generator's own compiled
sampler fills in the rest under ``labels``, then everything is decoded. Token ``t`` has bit ``j`` of weight
``2^j`` (LFQ channel ``j``); its "high" bits are the largest ``j``.

* MaskBit: the kept tokens are known from step 0 of the masked schedule and never re-masked; the schedule
  counts only the other tokens. A partly kept token (``vary``) is sampled with the values that disagree with
  its kept bits excluded. Any kept set works.
* BAR: kept bits are teacher-forced at their AR step, so only the steps AFTER them see them. A model trained
  to the raster order (every released one: the random-order training anneals to raster) can therefore keep a
  raster prefix of its AR steps (whole rows from the top, then part of a row from the left; patch models in
  patch rows): any other kept set is a :class:`KeepMaskError`. A model still trained on random orders
  (``randomness_anneal_end`` past ``max_train_steps``), or ``order="kept_first"``, generates the kept steps
  first and can keep any set. ``vary`` keeps bits in every step, so BAR samples each step's free bits seeing
  the full earlier steps and its own kept bits, not the later steps' kept bits.

Results are dicts as ``sample``'s: ``tokens [B, h, w]``, ``images [B, H, W, 3]`` (in [0, 1], not clamped),
``input_tokens`` and ``fixed_bits [B, h, w]`` (the bit mask of each token's kept bits: ``2^K - 1`` kept,
0 generated). The batch is split over the largest number of local devices that divides it (no padding, so
the draws are those of the unsplit batch); one compiled program per shape and setting.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax import bar_generator_api, registry
from maskbit_jax.bits import combine_tokens, split_tokens
from maskbit_jax.sampling import api as sampling_api, maskbit_api
from maskbit_jax.sampling.bar_sampler import generate
from maskbit_jax.sampling.maskgit_sampler import sample_tokens

ORDERS = ("auto", "raster", "kept_first")


class KeepMaskError(ValueError):
  """A keep mask (or bit set) that does not fit the images or that the model's generation order cannot keep."""


# ---------------------------------------------------------------- masks

def token_keep_mask(keep_mask, batch: int, image_hw: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
  """A pixel mask ``[H, W]`` / ``[B, H, W]`` or a token mask ``[h, w]`` / ``[B, h, w]`` (nonzero = keep) ->
  bool ``[B, h, w]``. A token is kept when every pixel of its cell is kept (a token that sees a generated
  pixel is generated)."""
  mask = np.asarray(keep_mask)
  if mask.dtype != bool and not np.issubdtype(mask.dtype, np.number):
    raise KeepMaskError(f"keep_mask must be boolean or numeric, got dtype {mask.dtype}")
  if mask.ndim == 2:
    mask = np.broadcast_to(mask, (batch,) + mask.shape)
  if mask.ndim != 3 or mask.shape[0] != batch:
    raise KeepMaskError(f"keep_mask must be [H, W], [B, H, W], [h, w] or [B, h, w] for a batch of {batch}, "
                        f"got shape {np.shape(keep_mask)}")
  keep = mask != 0
  if keep.shape[1:] == tuple(grid):
    return keep
  if keep.shape[1:] == tuple(image_hw):
    sh, sw = image_hw[0] // grid[0], image_hw[1] // grid[1]
    return keep.reshape(batch, grid[0], sh, grid[1], sw).all(axis=(2, 4))
  raise KeepMaskError(f"keep_mask of shape {np.shape(keep_mask)} is neither the images' {tuple(image_hw)} "
                      f"pixels nor their {tuple(grid)} token grid")


def box_keep_mask(image_hw: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
  """A pixel keep mask ``[H, W]`` that keeps everything outside ``box = (x0, y0, x1, y1)`` (pixels, end
  exclusive): the box is regenerated."""
  x0, y0, x1, y1 = (int(v) for v in box)
  h, w = image_hw
  if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
    raise KeepMaskError(f"box {box} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
  keep = np.ones((h, w), bool)
  keep[y0:y1, x0:x1] = False
  return keep


def kept_bits_mask(keep_bits, token_bits: int) -> int:
  """``keep_bits``: an int ``n`` (the ``n`` most significant bits) or a collection of bit positions (0 = least
  significant) -> the bit mask of the kept bits of a ``token_bits``-bit token."""
  if isinstance(keep_bits, (int, np.integer)) and not isinstance(keep_bits, bool):
    n = int(keep_bits)
    if not 0 <= n <= token_bits:
      raise KeepMaskError(f"keep_bits={n}: a token has {token_bits} bits, keep 0 to {token_bits} of them")
    return ((1 << n) - 1) << (token_bits - n)
  try:
    positions = sorted({int(j) for j in keep_bits})
  except (TypeError, ValueError):
    raise KeepMaskError(f"keep_bits must be an int or bit positions, got {keep_bits!r}") from None
  bad = [j for j in positions if not 0 <= j < token_bits]
  if bad:
    raise KeepMaskError(f"bit positions {bad} are outside a {token_bits}-bit token (0 .. {token_bits - 1})")
  return sum(1 << j for j in positions)


# ---------------------------------------------------------------- models

def check_models(gen, tok, key) -> tuple[int, int]:
  """The pair checked as ``sample`` checks it; returns the token grid ``(h, w)``."""
  sampling_api.check_call(gen, tok, key)
  sampling_api.check_pair(gen, tok)
  return tuple(gen.grid)


def _encode(tok, images) -> jax.Array:
  """Images ``[B, H, W, 3]`` in [0, 1] -> int32 tokens ``[B, h, w]`` (a decode-only tokenizer says so)."""
  return tok.encode(images)


def image_hw(tok, grid) -> tuple[int, int]:
  """The pixel size of a ``grid`` of ``tok``'s tokens."""
  return grid[0] * tok.latent_stride, grid[1] * tok.latent_stride


def _batch(images, labels, nclass_check) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of one batch: one image with ``n`` labels is edited ``n`` times."""
  labels = np.asarray(nclass_check(labels))
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if images.ndim == 4 and images.shape[0] == 1 and len(labels) > 1:
    images = np.repeat(images, len(labels), axis=0)
  if images.ndim == 4 and images.shape[0] != len(labels):
    raise ValueError(f"{images.shape[0]} images but {len(labels)} labels: give one label per image "
                     f"(or one image and several labels)")
  return images, labels


# ---------------------------------------------------------------- placement

def _mesh_for(batch: int) -> jax.sharding.Mesh:
  """Every local device as ``data x copies``, ``data`` the largest device count that divides ``batch`` (no
  padding: padded rows would change the draws); over all of them, as the parameters ``sample``'s command
  replicates."""
  devices = jax.local_devices()
  data = max(d for d in range(1, len(devices) + 1) if batch % d == 0 and len(devices) % d == 0)
  return jax.sharding.Mesh(np.asarray(devices).reshape(data, -1), ("data", "copies"))


def _place(mesh, *arrays):
  spec = jax.sharding.PartitionSpec("data")
  return tuple(jax.device_put(jnp.asarray(a), jax.sharding.NamedSharding(mesh, spec)) for a in arrays)


_PLACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _params_on(model, mesh):
  """``model.params`` replicated over ``mesh``, kept per model for its last mesh (the next batch of that
  size sends nothing). Every argument of one program must share one mesh: parameters replicated over
  another mesh of the same devices would leave XLA's output shardings unmappable."""
  hit = _PLACED.get(model)
  if hit is None or hit[0] != mesh:
    hit = (mesh, jax.device_put(model.params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())))
    _PLACED[model] = hit
  return hit[1]


# ---------------------------------------------------------------- generation with known bits

@functools.partial(jax.jit, static_argnames=("gen_module", "tok_module", "settings", "decode"))
def _maskbit_program(gen_params, tok_params, tokens_bhw, fixed_bhw, labels, key, *, gen_module, tok_module,
                     settings, decode):
  bits, splits, b = gen_module.token_size, gen_module.codebook_splits, tokens_bhw.shape[0]

  def logits_fn(tokens, labels, drop, step):
    del step
    return gen_module.apply({"params": gen_params}, tokens, labels, drop)

  # the fixed-bit mask splits as the tokens do: split m of the mask is the mask of split m's bits
  known_tokens = split_tokens(tokens_bhw.reshape(b, -1), bits, splits)
  known_bits = split_tokens(fixed_bhw.reshape(b, -1), bits, splits)
  out = sample_tokens(logits_fn, labels, key, num_positions=gen_module.seq_len, codebook_splits=splits,
                      mask_token=gen_module.mask_token, known_tokens=known_tokens, known_bits=known_bits,
                      **dict(settings))
  tokens = combine_tokens(out, bits).reshape(tokens_bhw.shape)
  images = tok_module.apply({"params": tok_params}, tokens, method="decode_tokens") if decode else None
  return tokens, images


def _token_bits_flat(x_bhw: jax.Array, token_bits: int) -> jax.Array:
  """int32 ``[B, h, w]`` -> its bits ``[B, cells*K]`` (cells row-major, bit j = weight 2^j), BAR's layout."""
  j = jnp.arange(token_bits, dtype=jnp.int32)
  return ((x_bhw[..., None] >> j) & 1).reshape(x_bhw.shape[0], -1)


def _random_order_model(gen) -> bool:
  """True when the BAR model's training ended still on random generation orders (its anneal not finished)."""
  cfg = gen.config
  g = (cfg.get("model", None) or {}).get("generator", None) or {}
  end, total = g.get("randomness_anneal_end", None), (cfg.get("training", None) or {}).get("max_train_steps", None)
  return end is not None and total is not None and int(end) > int(total)


def bar_orders(gen, fixed_bhw: np.ndarray, order: str = "auto") -> np.ndarray:
  """The generation orders ``[B, L]`` (AR steps) that can keep ``fixed_bhw``'s bits, or a :class:`KeepMaskError`.

  ``raster``: the kept steps must be a raster prefix; ``kept_first``: steps with kept bits first (in raster
  order), then the others; ``auto``: ``kept_first`` for a model trained on random orders, else ``raster``.
  """
  if order not in ORDERS:
    raise ValueError(f"order={order!r}: choose one of {ORDERS}")
  if order == "auto":
    order = "kept_first" if _random_order_model(gen) else "raster"
  module = gen.module
  kept = np.asarray(module.steps_from_bits(_token_bits_flat(jnp.asarray(fixed_bhw), module.token_bits))).any(-1)
  if order == "kept_first":
    return np.argsort(~kept, axis=-1, kind="stable").astype(np.int32)
  first_free = np.argmin(kept, axis=-1)  # the first step with nothing kept (0 when every step keeps bits)
  later = kept & (np.arange(kept.shape[1])[None] > first_free[:, None])
  bad = np.flatnonzero(later.any(-1) & ~kept.all(-1))
  if bad.size:
    raise KeepMaskError(
        f"image {bad[0]}: this BAR model generates in raster order (AR step = {module.patch_size}x"
        f"{module.patch_size} tokens), so it can keep a raster prefix of its steps only (rows from the top, then "
        f"a row's start), not kept tokens after generated ones; order='kept_first' forces the kept steps first "
        f"(for a model trained on random orders)")
  return np.broadcast_to(np.arange(kept.shape[1], dtype=np.int32), kept.shape).copy()


def maskbit_known(gen, tok, tokens, fixed, labels, key, mesh, *, decode: bool, order: str, **settings):
  """The MaskBit family's generation with known bits: kept tokens are known from step 0 of the schedule."""
  if order not in ORDERS:
    raise ValueError(f"order={order!r}: choose one of {ORDERS}")
  settings = maskbit_api.resolve_settings(gen, settings)
  labels_p, tokens_p, fixed_p = _place(mesh, labels.astype(np.int32), tokens, fixed)
  return _maskbit_program(_params_on(gen, mesh), _params_on(tok, mesh), tokens_p, fixed_p, labels_p, key,
                          gen_module=gen.module, tok_module=tok.module, settings=tuple(sorted(settings.items())),
                          decode=decode)


def bar_known(gen, tok, tokens, fixed, labels, key, mesh, *, decode: bool, order: str, **settings):
  """The BAR family's generation with known bits: kept bits are teacher-forced at their AR step."""
  settings = bar_generator_api.resolve_settings(gen, settings)
  orders = bar_orders(gen, fixed, order)
  labels_p, bits_p, mask_p, orders_p = _place(mesh, labels.astype(np.int32), _token_bits_flat(tokens, gen.token_bits),
                                              _token_bits_flat(fixed, gen.token_bits).astype(bool), orders)
  out_bits = generate(gen.module, _params_on(gen, mesh), labels_p, key, orders=orders_p, known_bits=bits_p,
                      known_mask=mask_p, **settings)
  grid = tuple(gen.module.grid)
  if decode:
    return bar_generator_api.decode_bits(dataclasses.replace(tok, params=_params_on(tok, mesh)), out_bits, grid)
  return bar_generator_api.bits_to_tokens(out_bits, grid, gen.token_bits), None


def generate_known(gen, tok, tokens, fixed_bits, labels, key, *, decode: bool = True, order: str = "auto",
                   **settings) -> dict:
  """The core of ``edit`` / ``vary`` / ``outpaint``: tokens ``[B, h, w]`` whose bits under ``fixed_bits`` (a
  per-token bit mask ``[B, h, w]``) are kept, the rest generated for ``labels [B]``, by the generator
  family's ``known_sampler`` (``maskbit_known``, ``bar_known``: ``fn(gen, tok, tokens, fixed_bits, labels, key,
  mesh, *, decode, order, **settings) -> (tokens, images or None)``)."""
  tokens = np.asarray(tokens, np.int32)
  fixed = np.asarray(fixed_bits, np.int32)
  mesh = _mesh_for(tokens.shape[0])
  known = registry.of(gen).get("known_sampler")
  out_tokens, images = known(gen, tok, tokens, fixed, labels, key, mesh, decode=decode, order=order, **settings)
  out = dict(tokens=out_tokens, input_tokens=jnp.asarray(tokens), fixed_bits=jnp.asarray(fixed))
  if decode:
    out["images"] = images
  return out


# ---------------------------------------------------------------- public API

def edit(gen, tok, images, keep_mask, labels, key: jax.Array, *, decode: bool = True, order: str = "auto",
         **settings) -> dict:
  """Keeps the tokens of ``images`` under ``keep_mask`` and generates the others for ``labels``.

  Args:
    gen, tok: a MaskBit generator and its tokenizer, or a BAR generator and the tokenizer its bits decode with
      (BAR-FSQ loaded ``with_encoder=True``).
    images: float ``[B, H, W, 3]`` (or one ``[H, W, 3]``) in [0, 1] at the generator's resolution; one image
      with several labels is edited once per label.
    keep_mask: nonzero = keep; pixels ``[H, W]`` / ``[B, H, W]`` (a token is kept when all its pixels are) or
      tokens ``[h, w]`` / ``[B, h, w]``. All zero: ``sample`` for the same key; all kept: the reconstruction.
    labels: class ids ``[B]``; key: PRNG key (the same key gives the same images).
    order: BAR only, see ``bar_orders``.
    **settings: the sampler's, as for ``sample`` (default: the config's released settings).
  Returns:
    dict with ``tokens``, ``images`` (absent with ``decode=False``), ``input_tokens``, ``fixed_bits``.
  """
  grid = check_models(gen, tok, key)
  images, labels = _batch(images, labels, gen.check_labels)
  tokens = _encode(tok, images)
  keep = token_keep_mask(keep_mask, images.shape[0], images.shape[1:3], grid)
  fixed = np.where(keep, (1 << gen.token_bits) - 1, 0).astype(np.int32)
  return generate_known(gen, tok, tokens, fixed, labels, key, decode=decode, order=order, **settings)


def vary(gen, tok, images, keep_bits, labels, key: jax.Array, *, decode: bool = True, **settings) -> dict:
  """Every token of ``images`` keeps ``keep_bits`` (its ``n`` most significant bits, or a collection of bit
  positions, 0 = least significant) and the generator resamples its other bits under that constraint.

  ``keep_bits`` equal to the token width gives the reconstruction, 0 a plain sample. Arguments and result as
  ``edit``.
  """
  check_models(gen, tok, key)
  images, labels = _batch(images, labels, gen.check_labels)
  tokens = _encode(tok, images)
  fixed = np.full(np.shape(tokens), kept_bits_mask(keep_bits, gen.token_bits), np.int32)
  return generate_known(gen, tok, tokens, fixed, labels, key, decode=decode, order="raster", **settings)


def outpaint_windows(canvas: tuple[int, int], grid: tuple[int, int], known: np.ndarray) -> list[tuple[int, int]]:
  """Top-left corners of the ``grid``-sized windows that fill a ``canvas`` token grid from ``known [H, W]``.

  Candidate windows overlap by half a window; each round takes the one with the most known tokens that still
  has unknown ones (ties: raster order), until every token is known.
  """
  (ch, cw), (gh, gw) = canvas, grid

  def starts(size, win):
    step = max(1, win // 2)
    return sorted(set(list(range(0, size - win + 1, step)) + [size - win]))

  candidates = [(y, x) for y in starts(ch, gh) for x in starts(cw, gw)]
  known = known.copy()
  order = []
  while not known.all():
    counts = [(known[y:y + gh, x:x + gw].sum(), -i) for i, (y, x) in enumerate(candidates)
              if not known[y:y + gh, x:x + gw].all()]
    _, neg_i = max(counts)
    y, x = candidates[-neg_i]
    order.append((y, x))
    known[y:y + gh, x:x + gw] = True
  return order


def outpaint(gen, tok, images, labels, key: jax.Array, *, pad: tuple[int, int, int, int], order: str = "auto",
             **settings) -> dict:
  """Extends ``images`` by ``pad = (top, bottom, left, right)`` tokens: windows of the generator's token grid
  are generated one after the other around the kept image (``outpaint_windows``; window ``i`` draws with
  ``fold_in(key, i)``), each keeping what is known so far, and the whole canvas is decoded at once.

  MaskBit: any direction. BAR: a raster-order model can extend downwards only (its windows must keep a raster
  prefix); the BAR-FSQ decoder decodes one fixed grid, so outpainting needs an LFQ tokenizer there.
  Returns ``tokens [B, h + top + bottom, w + left + right]``, ``images`` and ``fixed_bits`` of the canvas.
  """
  grid = check_models(gen, tok, key)
  top, bottom, left, right = (int(p) for p in pad)
  if min(top, bottom, left, right) < 0:
    raise KeepMaskError(f"pad {pad} must be non-negative token counts (top, bottom, left, right)")
  if tok.image_size is not None:  # a decoder of one fixed token grid (BAR-FSQ)
    raise ValueError("the BAR-FSQ decoder decodes its own fixed token grid only: outpaint with a BAR on LFQ "
                     "tokens, or a MaskBit model")
  images, labels = _batch(images, labels, gen.check_labels)
  tokens = np.asarray(_encode(tok, images))
  b, (gh, gw) = tokens.shape[0], grid
  canvas = np.zeros((b, gh + top + bottom, gw + left + right), np.int32)
  known = np.zeros(canvas.shape[1:], bool)
  canvas[:, top:top + gh, left:left + gw] = tokens
  known[top:top + gh, left:left + gw] = True
  full = (1 << gen.token_bits) - 1
  for i, (y, x) in enumerate(outpaint_windows(canvas.shape[1:], grid, known)):
    window = np.broadcast_to(np.where(known[y:y + gh, x:x + gw], full, 0), (b, gh, gw)).astype(np.int32)
    out = generate_known(gen, tok, canvas[:, y:y + gh, x:x + gw], window, labels, jax.random.fold_in(key, i),
                         decode=False, order=order, **settings)
    canvas[:, y:y + gh, x:x + gw] = np.asarray(out["tokens"])
    known[y:y + gh, x:x + gw] = True
  fixed = np.zeros(canvas.shape, np.int32)
  fixed[:, top:top + gh, left:left + gw] = full
  return dict(tokens=jnp.asarray(canvas), images=tok.decode_tokens(canvas), input_tokens=jnp.asarray(tokens),
              fixed_bits=jnp.asarray(fixed))


def kept_fraction(fixed_bhw: np.ndarray, token_bits: int) -> np.ndarray:
  """The fraction of each token's bits that is kept: float ``[..., h, w]`` in [0, 1]."""
  fixed = np.asarray(fixed_bhw, np.int64)
  return sum((fixed >> j) & 1 for j in range(token_bits)) / token_bits


# ``maskbit_jax.edit.outpaint`` / ``.vary``: the documented spelling from when ``maskbit_jax.edit`` was a module
edit.outpaint, edit.vary = outpaint, vary

__all__ = ["KeepMaskError", "ORDERS", "bar_known", "bar_orders", "box_keep_mask", "check_models", "edit",
           "generate_known", "image_hw", "kept_bits_mask", "kept_fraction", "maskbit_known", "outpaint",
           "outpaint_windows", "token_keep_mask", "vary"]
