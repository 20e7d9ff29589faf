"""BAR: a causal transformer over AR steps of bits, with the MBM head predicting each step's bits.

Tokens are never packed into integers: the tokenizer emits ``[B, cells, K]``
bits, the generator takes them flat as ``[B, cells*K]`` (cells row-major).
With ``patch_size`` p > 1, one AR step gathers a p x p patch of cells
("token shuffling": bits ordered row-in-patch, col-in-patch, bit), so there
are ``L = cells / p^2`` AR steps of ``k = K p^2`` bits.

The sequence is ``[cls, class_emb x R, step tokens in generation order]``
(prefix ``P = 1 + R``); position ``t`` carries

* ``pos_embed``: rows ``0..P-1`` for the prefix, row ``P + orders[i]`` for token i;
* ``target_aware_pos_embed`` of the cell to predict next: row ``P + orders[0]``
  for every prefix position, ``P + orders[i+1]`` for token i (the last token
  repeats its own cell);
* adaLN condition ``c_t = class_emb + timesteps_embeddings[t]`` (t absolute);
* 2D RoPE over the AR grid (rows ``P + cell`` of a table whose ``P`` prefix rows
  are the identity): keys and the first half of the query heads use the current
  cell, the second half of the query heads the target cell.

Blocks are pre-norm with RMSNorm, QK-RMSNorm, SwiGLU and adaLN-Zero; the
causal mask covers the whole sequence. They run as one ``nn.scan``
(``models.stack``): parameters ``blocks/...`` with a leading layer axis, the
key/value cache ``(k, v)`` of all blocks ``[depth, B, H, P + L, hd]`` each,
split over the layers as the scan's xs and stacked again as its ys (each block
updates its own slice). Outputs at positions ``P-1 .. P-1+L-1``
go through RMSNorm and ``latent_condition_proj`` and condition the MBM head
for steps ``0 .. L-1``.

Entry points (all through ``module.apply``):

* ``__call__(bits, condition_ids, orders, ...)``: training forward, returns
  the head's logits, targets and masks (``losses.bar_mbm_loss.generator_mbm_loss``
  makes the loss of them); the head's random masking comes from the ``masking``
  rng stream, or from explicit draws.
* ``latent_conditions(ids, condition_ids, orders)``: non-cached forward on
  step tokens already in generation order ``[B, n, k]`` -> ``z [B, n+1, W]``.
* ``prefill`` / ``decode``: the same with a key/value cache, one position
  block at a time (the prefix, then one token per call).
* ``head_logits``: the MBM head alone.

Precision: with ``dtype=bfloat16`` the backbone runs as the reference does
under torch's bf16 autocast. Linear layers and attention compute in bf16
(attention scores and softmax in float32), while the residual stream stays
float32: embeddings, position and timestep tables and the adaLN condition are
float32, a bf16 branch output ``gate * h`` added to the stream promotes to
float32, and every RMSNorm computes in float32 and returns its input's dtype
(float32 on the stream). The MBM head has no float32 stream under autocast
(its ``ln_pre`` gets the bf16 ``input_proj`` output and returns bf16), so it
runs in bf16 as there.

Parameter names follow the PyTorch ``BAR`` module (``maskbit_jax.convert.bar_mapping``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from maskbit_jax.models import initializers, layers, stack
from maskbit_jax.models.attention import dot_product_attention
from maskbit_jax.models.bar_mbm_head import OUT, MBMHead, SwiGLU, collect_intermediates, modulate, swiglu_hidden
from maskbit_jax.models.layers import RMSNorm, dense, embed
from maskbit_jax.models.mbm_masking import draw_mbm_masking, mbm_masking
from maskbit_jax.models.model_config import BarGeneratorConfig

_INIT = initializers.trunc_normal_02  # cls_token and the position / timestep tables
ROPE_THETA = 10000.0
POS_EMBED_EXTRA_ROWS = 128       # pos_embed / target_aware_pos_embed have L + 128 rows
TIME_EMBED_EXTRA_ROWS = 100      # timesteps_embeddings has L + 100 rows
# The residual stream's dtype whatever the compute dtype (torch autocast leaves additions in float32).
STREAM_DTYPE = jnp.float32


@functools.lru_cache(maxsize=16)
def rope_tables(head_dim: int, side: int, prefix: int) -> tuple[np.ndarray, np.ndarray]:
  """The 2D RoPE tables ``cos, sin [prefix + side^2, head_dim]`` (float32), as the reference builds them.

  Per axis ``hd/4`` "lang" frequencies ``1 / theta^(2i / (hd/2))``, each repeated
  twice (adjacent pairs rotate together); the first ``hd/2`` dims use the row,
  the last ``hd/2`` the column of cell ``row * side + col``. The ``prefix``
  leading rows are the identity (cos 1, sin 0). Computed in float32 like the
  reference; the last bit of a few entries can differ from PyTorch's cos/sin.
  """
  if head_dim % 4:
    raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
  dim = head_dim // 2
  freqs = (1.0 / (np.float32(ROPE_THETA) ** (np.arange(0, dim, 2, dtype=np.float32)[: dim // 2]
                                              / np.float32(dim)))).astype(np.float32)
  t = (np.arange(side, dtype=np.float32) / np.float32(side) * np.float32(side)).astype(np.float32)
  axis = np.repeat(np.outer(t, freqs).astype(np.float32), 2, axis=-1)          # [side, hd/2]
  grid = np.concatenate([np.broadcast_to(axis[:, None, :], (side, side, dim)),
                         np.broadcast_to(axis[None, :, :], (side, side, dim))], axis=-1).reshape(-1, head_dim)
  cos = np.concatenate([np.ones((prefix, head_dim), np.float32), np.cos(grid)]).astype(np.float32)
  sin = np.concatenate([np.zeros((prefix, head_dim), np.float32), np.sin(grid)]).astype(np.float32)
  return cos, sin


def apply_rope(x_bhtd: jax.Array, cos_btd: jax.Array, sin_btd: jax.Array) -> jax.Array:
  """``x cos + rotate_half(x) sin`` in float32, adjacent pairs ``(x0, x1) -> (-x1, x0)``."""
  x = x_bhtd.astype(jnp.float32)
  pairs = x.reshape(*x.shape[:-1], -1, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  out = x * cos_btd[:, None] + rotated * sin_btd[:, None]
  return out.astype(x_bhtd.dtype)


def patchify(ids_bck: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
  """``[B, cells, K]`` (cells row-major) -> ``[B, L, p*p*K]``: ``'b (h sh w sw) n -> b (h w) (sh sw n)'``."""
  if patch == 1:
    return ids_bck
  b, _, k = ids_bck.shape
  h, w = grid[0] // patch, grid[1] // patch
  x = ids_bck.reshape(b, h, patch, w, patch, k).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * w, patch * patch * k)


def unpatchify(ids_blk: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
  """Inverse of ``patchify``: ``[B, L, p*p*K] -> [B, cells, K]``."""
  if patch == 1:
    return ids_blk
  b = ids_blk.shape[0]
  h, w = grid[0] // patch, grid[1] // patch
  k = ids_blk.shape[-1] // (patch * patch)
  x = ids_blk.reshape(b, h, w, patch, patch, k).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * patch * w * patch, k)


def gather_steps(x_bl: jax.Array, orders_bl: jax.Array) -> jax.Array:
  """``out[b, i] = x[b, orders[b, i]]`` (the reference's ``shuffle``)."""
  idx = orders_bl.reshape(orders_bl.shape + (1,) * (x_bl.ndim - 2))
  return jnp.take_along_axis(x_bl, idx.astype(jnp.int32), axis=1)


def scatter_steps(x_bl: jax.Array, orders_bl: jax.Array) -> jax.Array:
  """``out[b, orders[b, i]] = x[b, i]`` (the reference's ``unshuffle``)."""
  inverse = jnp.argsort(orders_bl, axis=-1)
  return gather_steps(x_bl, inverse)


class Attention(nn.Module):
  """Self-attention with QK-RMSNorm and target-aware 2D RoPE, optionally over a key/value cache."""

  dim: int
  heads: int
  tag: str
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_btd, rope_cur, rope_tgt, *, cache=None, offset=None, deterministic=True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    b, t, _ = x_btd.shape
    hd = self.dim // self.heads
    qkv = dense(3 * self.dim, ("embed", "qkv"), "qkv", **kw)(x_btd)
    self.sow("intermediates", f"{self.tag}_qkv", qkv)
    q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.heads, hd), (2, 3), (0, 2))   # each [B, H, T, hd]
    q = RMSNorm(param_dtype=self.param_dtype, name="q_norm")(q)
    k = RMSNorm(param_dtype=self.param_dtype, name="k_norm")(k)
    self.sow("intermediates", f"{self.tag}_q_normed", q)
    self.sow("intermediates", f"{self.tag}_k_normed", k)
    half = self.heads // 2
    q_cur = apply_rope(q[:, :half], *rope_cur)
    q_tgt = apply_rope(q[:, half:], *rope_tgt)
    k = apply_rope(k, *rope_cur)
    self.sow("intermediates", f"{self.tag}_q_rope_current_half", q_cur)
    self.sow("intermediates", f"{self.tag}_q_rope_target_half", q_tgt)
    self.sow("intermediates", f"{self.tag}_k_rope", k)
    q = jnp.concatenate([q_cur, q_tgt], axis=1)
    if cache is None:
      keys, values = k, v
      visible = jnp.tril(jnp.ones((t, t), bool))
    else:
      # Keys are stored rotated; query i (absolute position offset + i) sees cache rows <= offset + i.
      # This block's cache slice comes in as the scan's xs and goes out, updated, as its ys.
      k_l, v_l = cache
      start = (0, 0, offset, 0)
      k_l = jax.lax.dynamic_update_slice(k_l, k.astype(k_l.dtype), start)
      v_l = jax.lax.dynamic_update_slice(v_l, v.astype(v_l.dtype), start)
      cache = (k_l, v_l)
      keys, values = k_l, v_l
      visible = jnp.arange(keys.shape[2])[None, :] <= offset + jnp.arange(t)[:, None]
    # [B, H, T, hd] -> [B, T, H, hd]; scores accumulate and stay float32, as in a fused bf16 attention kernel
    to_bthd = lambda a: jnp.swapaxes(a.astype(self.dtype), 1, 2)
    out = dot_product_attention(to_bthd(q), to_bthd(keys), to_bthd(values), mask=visible, scale=hd ** -0.5,
                                precision=self.precision)
    out = dense(self.dim, ("attn_out", "embed"), "proj", **kw)(out.reshape(b, t, self.dim))
    # attn_drop exists in the reference but is never applied; proj_drop is.
    return nn.Dropout(self.dropout)(out, deterministic=deterministic), cache


class Block(nn.Module):
  """Pre-norm adaLN-Zero block: ``x += g1 * attn(mod(norm1 x))``, ``x += g2 * mlp(mod(norm2 x))``.

  The body of the scan over depth: ``(x, cache, c, rope_cur, rope_tgt, offset, deterministic)
  -> (x, cache)``: ``x`` is the carry; ``cache`` is this block's slice ``(k, v) [B, H, P + L, hd]`` of the
  all-blocks cache (xs in, updated ys out; None without a cache).
  ``x`` and ``c`` are float32 (``STREAM_DTYPE``); the branches compute in ``dtype``.
  """

  dim: int
  heads: int
  tag: str
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, cache, c, rope_cur, rope_tgt, offset=None, deterministic=True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    ada = dense(6 * self.dim, ("embed", "mlp"), "adaLN_modulation_1", zero_init=True, **kw)(nn.silu(c))
    self.sow("intermediates", f"{self.tag}_adaln", ada)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(ada, 6, axis=-1)
    h = modulate(RMSNorm(param_dtype=self.param_dtype, name="norm1")(x), shift_msa, scale_msa)
    h, cache = Attention(self.dim, self.heads, self.tag, self.dropout, name="attn", **kw)(
        h, rope_cur, rope_tgt, cache=cache, offset=offset, deterministic=deterministic)
    self.sow("intermediates", f"{self.tag}_attn", h)
    x = x + gate_msa * h
    h = modulate(RMSNorm(param_dtype=self.param_dtype, name="norm2")(x), shift_mlp, scale_mlp)
    h = SwiGLU(swiglu_hidden(self.dim), self.dropout, name="mlp", **kw)(h, deterministic)
    self.sow("intermediates", f"{self.tag}_mlp", h)
    x = x + gate_mlp * h
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    self.sow("intermediates", self.tag, x)
    return x, cache


BLOCK_TAG = "block"  # the scanned blocks sow block_adaln, ..., one slice per layer (see backbone_intermediates)


def backbone_intermediates(tree) -> dict:
  """``{sow name: array}`` of the backbone (head left out), the scanned blocks' values split per layer:
  ``block_adaln [L, ...]`` -> ``block<i>_adaln``."""
  tree = dict(tree)
  blocks = tree.pop("blocks", {})
  out = collect_intermediates(tree, skip=("lm_head",))
  for name, stacked in collect_intermediates(blocks).items():
    for i in range(stacked.shape[0]):
      key = f"{BLOCK_TAG}{i}" + name[len(BLOCK_TAG):]
      if key in out:
        raise ValueError(f"intermediate {key!r} is sown twice")
      out[key] = stacked[i]
  return out


class BarGenerator(nn.Module):
  """The BAR generator (reference ``BAR``); see the module docstring for the entry points."""

  hidden_size: int = 768
  depth: int = 24
  num_heads: int = 12
  image_seq_len: int = 256          # latent cells (before patching)
  token_bits: int = 16              # K: bits per latent cell (the tokenizer's token_size)
  patch_size: int = 1
  latent_height: int | None = None  # default: sqrt(image_seq_len)
  latent_width: int | None = None
  num_classes: int = 1000
  target_codebook_size: int = 2
  repeat_class_condition: int = 32
  dropout: float = 0.0
  head_width: int = 2048
  head_layers: int = 3
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  # ---- derived sizes ----
  @property
  def grid(self) -> tuple[int, int]:
    if self.latent_height is None or self.latent_width is None:
      side = math.isqrt(self.image_seq_len)
      return side, side
    return int(self.latent_height), int(self.latent_width)

  @property
  def num_steps(self) -> int:
    return self.image_seq_len // (self.patch_size ** 2)

  @property
  def step_bits(self) -> int:
    return self.token_bits * self.patch_size ** 2

  @property
  def prefix_len(self) -> int:
    return 1 + self.repeat_class_condition

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def mask_id(self) -> int:
    return self.target_codebook_size

  @property
  def class_offset(self) -> int:
    return self.target_codebook_size + 1

  @property
  def none_condition_id(self) -> int:
    return self.num_classes + self.target_codebook_size + 1

  @property
  def bit_embed_dim(self) -> int:
    return math.ceil(self.hidden_size / self.step_bits)

  @property
  def rope_side(self) -> int:
    return math.isqrt(self.num_steps)

  def condition_ids(self, labels: jax.Array, drop_mask: jax.Array | None = None) -> jax.Array:
    """Class labels -> embedding rows: ``label + 3``, or the null id where ``drop_mask`` is True."""
    ids = jnp.asarray(labels).astype(jnp.int32) + self.class_offset
    if drop_mask is None:
      return ids
    return jnp.where(jnp.asarray(drop_mask, bool), jnp.int32(self.none_condition_id), ids)

  def init_cache(self, batch: int, dtype: Any = None) -> tuple[jax.Array, jax.Array]:
    """An empty key/value cache for ``batch`` rows: ``(k, v)``, each ``[depth, B, H, P + L, hd]``."""
    shape = (self.depth, batch, self.num_heads, self.prefix_len + self.num_steps, self.head_dim)
    dtype = dtype or self.dtype
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

  # ---- structure ----
  def setup(self):
    validate_bar_fields(dict(hidden_size=self.hidden_size, num_heads=self.num_heads,
                             image_seq_len=self.image_seq_len, patch_size=self.patch_size,
                             latent_height=self.grid[0], latent_width=self.grid[1],
                             repeat_class_condition=self.repeat_class_condition))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    d, rows = self.hidden_size, self.num_steps + POS_EMBED_EXTRA_ROWS
    self.cls_token = self.param("cls_token", nn.with_logical_partitioning(_INIT, (None, None, "embed")),
                                (1, 1, d), self.param_dtype)
    self.pos_embed = self.param("pos_embed", nn.with_logical_partitioning(_INIT, (None, "length", "embed")),
                                (1, rows, d), self.param_dtype)
    self.target_aware_pos_embed = self.param(
        "target_aware_pos_embed", nn.with_logical_partitioning(_INIT, (None, "length", "embed")),
        (1, rows, d), self.param_dtype)
    self.timesteps_embeddings = self.param(
        "timesteps_embeddings", nn.with_logical_partitioning(_INIT, (None, "length", "embed")),
        (1, self.num_steps + TIME_EMBED_EXTRA_ROWS, d), self.param_dtype)
    blocks_cls = stack.scanned(Block, self.depth, in_axes=(0,) + (nn.broadcast,) * 5,
                               remat_policy=self.remat_policy, static_argnums=(7,))
    self.blocks = blocks_cls(d, self.num_heads, BLOCK_TAG, self.dropout, **kw)
    self.norm = RMSNorm(param_dtype=self.param_dtype)
    self.lm_head = MBMHead(self.step_bits, self.head_width, self.head_layers, self.target_codebook_size,
                           zero_init=True, **kw)
    self.latent_condition_proj = dense(self.head_width, ("embed", "mlp"), "latent_condition_proj", **kw)
    # lookups are not autocast ops: the tables' float32 values enter the stream (and input_merge casts)
    self.embeddings = embed(self.target_codebook_size + 1 + self.num_classes + 1, d, ("classes", "embed"),
                            "embeddings", dtype=STREAM_DTYPE, param_dtype=self.param_dtype)
    self.input_embeddings = embed(self.target_codebook_size + 1, self.bit_embed_dim, ("vocab", "embed"),
                                  "input_embeddings", dtype=STREAM_DTYPE, param_dtype=self.param_dtype)
    self.input_merge = dense(d, ("bits", "embed"), "input_merge", **kw)

  # ---- pieces ----
  def _rope(self, rows_bt: jax.Array):
    cos, sin = rope_tables(self.head_dim, self.rope_side, self.prefix_len)
    return jnp.asarray(cos)[rows_bt], jnp.asarray(sin)[rows_bt]

  def embed_steps(self, ids_bnk: jax.Array) -> jax.Array:
    """Step bits ``[B, n, k]`` -> ``[B, n, D]``: per-bit embedding, concatenated bit-major, Linear."""
    e = self.input_embeddings(ids_bnk.astype(jnp.int32))
    self.sow("intermediates", "bit_embed", e)
    x = self.input_merge(e.reshape(*ids_bnk.shape[:2], -1))
    self.sow("intermediates", "input_merge" + OUT, x)  # "input_merge" is the Linear's scope
    return x

  def _prefix_inputs(self, cond_bd: jax.Array, orders_bl: jax.Array):
    b, p, d = cond_bd.shape[0], self.prefix_len, self.hidden_size
    first = p + orders_bl[:, 0].astype(jnp.int32)                                   # [B]
    f32 = STREAM_DTYPE
    tokens = jnp.concatenate([jnp.broadcast_to(self.cls_token.astype(f32), (b, 1, d)),
                              jnp.broadcast_to(cond_bd[:, None].astype(f32), (b, p - 1, d))], axis=1)
    x = tokens + self.pos_embed[0, :p].astype(f32)
    x = x + self.target_aware_pos_embed[0][first][:, None].astype(f32)
    c = cond_bd[:, None].astype(f32) + self.timesteps_embeddings[0, :p].astype(f32)
    rows = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    return x, c, rows, jnp.broadcast_to(first[:, None], (b, p))

  def _token_inputs(self, tok_bnd: jax.Array, cond_bd: jax.Array, orders_bl: jax.Array, start):
    """Inputs of tokens ``start .. start+n-1`` (generation order); ``start`` may be traced."""
    n, p, last = tok_bnd.shape[1], self.prefix_len, self.num_steps - 1
    idx = start + jnp.arange(n, dtype=jnp.int32)
    orders = orders_bl.astype(jnp.int32)
    cells = p + jnp.take(orders, idx, axis=1)                                        # [B, n]
    targets = p + jnp.take(orders, jnp.minimum(idx + 1, last), axis=1)
    f32 = STREAM_DTYPE
    x = tok_bnd.astype(f32) + self.pos_embed[0][cells].astype(f32)
    x = x + self.target_aware_pos_embed[0][targets].astype(f32)
    c = cond_bd[:, None].astype(f32) + self.timesteps_embeddings[0][p + idx][None].astype(f32)
    return x, c, cells, targets

  def _blocks(self, x, c, rows_cur, rows_tgt, cache=None, offset=None, deterministic=True):
    rope_cur, rope_tgt = self._rope(rows_cur), self._rope(rows_tgt)
    x, cache = self.blocks(x, cache, c, rope_cur, rope_tgt, offset, deterministic)
    return x, cache

  def _output(self, x):
    x = self.norm(x)
    self.sow("intermediates", "final_norm", x)
    z = self.latent_condition_proj(x)
    self.sow("intermediates", "latent_condition_proj" + OUT, z)
    return z

  def _backbone(self, tok_bnd, condition_ids, orders_bl, deterministic=True):
    """Non-cached forward over the prefix and ``n`` tokens -> ``z [B, n+1, W]`` (positions P-1 ..)."""
    cond = self.embeddings(condition_ids.astype(jnp.int32))
    self.sow("intermediates", "condition_token", cond)
    xp, cp, rp, tp = self._prefix_inputs(cond, orders_bl)
    xt, ct, rt, tt = self._token_inputs(tok_bnd, cond, orders_bl, 0)
    x, c = jnp.concatenate([xp, xt], axis=1), jnp.concatenate([cp, ct], axis=1)
    rows_cur, rows_tgt = jnp.concatenate([rp, rt], axis=1), jnp.concatenate([tp, tt], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    self.sow("intermediates", "block_input", x)
    self.sow("intermediates", "adaln_cond", c)
    self.sow("intermediates", "rope_order", rows_cur)
    self.sow("intermediates", "target_rope_order", rows_tgt)
    t = x.shape[1]
    self.sow("intermediates", "attn_mask", jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, -jnp.inf))
    x, _ = self._blocks(x, c, rows_cur, rows_tgt, deterministic=deterministic)
    return self._output(x[:, self.prefix_len - 1:])

  # ---- entry points ----
  def latent_conditions(self, ids_bnk: jax.Array, condition_ids: jax.Array, orders: jax.Array | None = None,
                        train: bool = False) -> jax.Array:
    """Step bits in generation order ``[B, n, k]`` (``0 <= n <= L``) -> head conditions ``z [B, n+1, W]``.

    ``z[:, i]`` conditions step i. The reference's ``forward_fn(..., is_sampling=True)``
    without a cache. ``orders [B, L]`` (default raster) maps step i to cell ``orders[:, i]``.
    """
    orders = self._orders(orders, ids_bnk.shape[0])
    return self._backbone(self.embed_steps(ids_bnk), condition_ids, orders, deterministic=not train)

  def prefill(self, condition_ids: jax.Array, orders: jax.Array | None, cache: tuple[jax.Array, jax.Array]):
    """Runs the ``P`` prefix positions into an empty cache -> ``(z of step 0 [B, W], cache)``."""
    orders = self._orders(orders, condition_ids.shape[0])
    cond = self.embeddings(condition_ids.astype(jnp.int32))
    x, c, rows_cur, rows_tgt = self._prefix_inputs(cond, orders)
    x, cache = self._blocks(x, c, rows_cur, rows_tgt, cache=cache, offset=0)
    return self._output(x[:, -1]), cache

  def decode(self, ids_bk: jax.Array, step, condition_ids: jax.Array, orders: jax.Array | None,
             cache: tuple[jax.Array, jax.Array]):
    """Feeds the bits of AR step ``step`` (traced int ok) ``[B, k]`` -> ``(z of step+1 [B, W], cache)``."""
    orders = self._orders(orders, condition_ids.shape[0])
    cond = self.embeddings(condition_ids.astype(jnp.int32))
    tok = self.embed_steps(ids_bk[:, None])
    x, c, rows_cur, rows_tgt = self._token_inputs(tok, cond, orders, step)
    x, cache = self._blocks(x, c, rows_cur, rows_tgt, cache=cache, offset=self.prefix_len + step)
    return self._output(x[:, -1]), cache

  def head_logits(self, masked_bits_nk: jax.Array, z: jax.Array, mask_ratio_n: jax.Array) -> jax.Array:
    """The MBM head: ``[N, k]`` bits (2 = masked), ``z [N, W]``, ratio ``[N]`` -> logits ``[N, k, 2]``."""
    return self.lm_head(masked_bits_nk, z, mask_ratio_n)

  def steps_from_bits(self, bits_flat: jax.Array) -> jax.Array:
    """``[B, cells*K]`` bits (cells row-major) -> AR-step bits ``[B, L, k]`` (raster over patches)."""
    b = bits_flat.shape[0]
    return patchify(bits_flat.reshape(b, self.image_seq_len, self.token_bits), self.grid, self.patch_size)

  def bits_from_steps(self, steps_blk: jax.Array) -> jax.Array:
    """Inverse of ``steps_from_bits``: ``[B, L, k] -> [B, cells*K]``."""
    b = steps_blk.shape[0]
    return unpatchify(steps_blk, self.grid, self.patch_size).reshape(b, -1)

  def __call__(self, bits: jax.Array, condition_ids: jax.Array, orders: jax.Array | None = None, *,
               mask_draws: tuple[jax.Array, jax.Array] | None = None, train: bool = False):
    """Training forward: the MBM head's logits for every AR step of every image (the loss: ``losses.bar_mbm_loss``).

    Args:
      bits: ``[B, cells*K]`` int, 0/1 (as the pretokenized data stores them).
      condition_ids: ``[B]`` embedding rows (``condition_ids(labels, drop_mask)``).
      orders: ``[B, L]`` generation order (a permutation per row; default raster).
      mask_draws: ``(normal [B*L], uniform [B*L, k])`` for the head's masking;
        default: drawn from the ``masking`` rng stream.
      train: enables dropout (``dropout`` rng stream).
    Returns:
      ``dict(logits [B*L, k, 2], target, masks, masked_input, mask_ratio,
      num_masked, conditions [B*L, W])``; rows are ``b * L + i`` (step i of
      image b in generation order). ``losses.bar_mbm_loss.generator_mbm_loss``
      turns it into ``(loss, aux)``.
    """
    b = bits.shape[0]
    steps = self.steps_from_bits(bits.astype(jnp.int32))
    self.sow("intermediates", "input_ids_steps", steps)
    orders = self._orders(orders, b)
    tok = gather_steps(self.embed_steps(steps), orders)
    target = gather_steps(steps, orders).reshape(b * self.num_steps, self.step_bits)
    z = self._backbone(tok, condition_ids, orders, deterministic=not train)[:, :-1]
    z = z.reshape(b * self.num_steps, self.head_width)
    if mask_draws is None:
      ratio, num_masked, masks = draw_mbm_masking(self.make_rng("masking"), b * self.num_steps, self.step_bits)
    else:
      ratio, num_masked, masks = mbm_masking(*mask_draws)
    masked = jnp.where(masks, jnp.int32(self.mask_id), target)
    logits = self.lm_head(masked, z, ratio)
    return dict(logits=logits, target=target, masks=masks, masked_input=masked, mask_ratio=ratio,
                num_masked=num_masked, conditions=z)

  def _orders(self, orders, batch: int) -> jax.Array:
    if orders is None:
      return jnp.broadcast_to(jnp.arange(self.num_steps, dtype=jnp.int32), (batch, self.num_steps))
    return jnp.asarray(orders).astype(jnp.int32)


# ---- building from flat fields / configs ----

BAR_FIELDS = ("hidden_size", "depth", "num_heads", "image_seq_len", "token_bits", "patch_size", "num_classes",
              "target_codebook_size", "repeat_class_condition", "dropout", "head_width", "head_layers")


def validate_bar_fields(f: Mapping[str, Any]) -> None:
  d, h = int(f["hidden_size"]), int(f["num_heads"])
  if d % h:
    raise ValueError(f"hidden_size={d} is not divisible by num_heads={h}")
  if h % 2:
    raise ValueError(f"target-aware RoPE splits the query heads in two halves: num_heads={h} must be even")
  if (d // h) % 4:
    raise ValueError(f"2D RoPE needs head_dim = hidden_size / num_heads divisible by 4, got {d // h}")
  cells, p = int(f["image_seq_len"]), int(f.get("patch_size", 1))
  hgt, wid = f.get("latent_height"), f.get("latent_width")
  if hgt is None or wid is None:
    side = math.isqrt(cells)
    if side * side != cells:
      raise ValueError(f"image_seq_len={cells} is not a square grid; give latent_height/latent_width")
    hgt = wid = side
  if int(hgt) * int(wid) != cells:
    raise ValueError(f"latent grid {hgt}x{wid} does not hold image_seq_len={cells} cells")
  if int(hgt) % p or int(wid) % p:
    raise ValueError(f"latent grid {hgt}x{wid} is not divisible by patch_size={p}")
  steps = cells // (p * p)
  if math.isqrt(steps) ** 2 != steps:
    raise ValueError(f"{steps} AR steps do not form a square grid (2D RoPE needs one)")
  if 1 + int(f["repeat_class_condition"]) > steps + TIME_EMBED_EXTRA_ROWS:
    raise ValueError("repeat_class_condition is too large for the timesteps_embeddings table")


def build_bar_module(config: BarGeneratorConfig | Mapping[str, Any], *, dtype: Any = jnp.float32,
                     param_dtype: Any = jnp.float32, precision: Any = None) -> BarGenerator:
  """The flax BAR generator from its typed config (``BarGeneratorConfig.from_config(cfg)``) or the same as
  flat fields (``bar_config.bar_fields(cfg)``)."""
  fields = config.fields() if isinstance(config, BarGeneratorConfig) else config
  validate_bar_fields(fields)
  kwargs = {k: fields[k] for k in BAR_FIELDS}
  kwargs = {k: float(v) if k == "dropout" else int(v) for k, v in kwargs.items()}
  for key in ("latent_height", "latent_width"):
    if fields.get(key) is not None:
      kwargs[key] = int(fields[key])
  kwargs["remat_policy"] = stack.check_remat_policy(str(fields.get("remat_policy", "none")))
  return BarGenerator(**kwargs, dtype=dtype, param_dtype=param_dtype, precision=precision)


def abstract_bar_params(module: BarGenerator):
  """ShapeDtypeStructs of the (boxed) params; allocates nothing."""
  bits = jax.ShapeDtypeStruct((1, module.image_seq_len * module.token_bits), jnp.int32)
  cond = jax.ShapeDtypeStruct((1,), jnp.int32)
  return jax.eval_shape(lambda x, c: module.init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                                                 x, c), bits, cond)["params"]


def init_bar_params(module: BarGenerator, rng: jax.Array):
  bits = jnp.zeros((1, module.image_seq_len * module.token_bits), jnp.int32)
  cond = jnp.full((1,), module.none_condition_id, jnp.int32)
  params = layers.jit_init(lambda r, b, c: module.init({"params": r, "masking": jax.random.fold_in(r, 1)}, b,
                                                       c)["params"])(rng, bits, cond)
  return nn.meta.unbox(params)
