"""BAR tokenizer encoder: SigLIP2 (naflex) vision tower in the reference's dual-copy layout (``SigLIP2Encoder``).

The reference loads ``google/siglip2-so400m-patch16-naflex`` from the hub and keeps

* ``siglip``: the pretrained vision model (``embeddings``, ``encoder``,
  ``post_layernorm``, ``head``), frozen. Its ``encoder`` / ``post_layernorm``
  are ALSO registered as ``frozen_encoder`` / ``frozen_post_layernorm`` (the same
  tensors under two names); the frozen stack produces ``clip_gt``, the target of
  the decoder's CLIP alignment loss. The attention-pooling ``head`` is never run.
* ``trainable_encoder`` / ``trainable_post_layernorm``: a copy of the stack that
  is fine-tuned; its output ``z`` is what the quantiser sees.

Both stacks start from the shared ``siglip.embeddings``:

1. naflex patchify: NHWC images in [-1, 1] -> ``[B, h*w, p*p*3]`` with the
   channel fastest (torch ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'``);
2. ``patch_embedding`` (a Linear) plus the position table ``[s*s, W]`` resized
   to the ``h x w`` grid by bilinear interpolation WITH antialiasing,
   ``align_corners=False``, in float32 (``resize_position_table``);
3. SigLIP2 encoder layers: pre-norm LayerNorm (eps ``layer_norm_eps``), separate
   ``q/k/v_proj``, scale ``hd^-0.5``, tanh-approximate GELU MLP.

Here the tree holds ``siglip`` (embeddings, encoder = the frozen stack,
post_layernorm, head), ``trainable_encoder`` and ``trainable_post_layernorm``; the
converter maps the alias names onto ``siglip``. Intermediates (``intermediates``
collection): ``pixel_patches``, ``enc_pos_resized``, ``enc_embeddings``,
``enc_trainable_layer<i>``, ``enc_frozen_layer<i>``, ``enc_features``, ``clip_gt``.

The SigLIP2 so400m vision config is not stated in the reference; the defaults
(width 1152, MLP 4304, 27 layers, 16 heads, 256 position rows, patch 16) are the
hub model's published config and match the released parameter count.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from maskbit_jax.models.attention import dot_product_attention
from maskbit_jax.models.layers import dense, layer_norm

HIDDEN_ACTS = ("gelu_pytorch_tanh", "gelu")


def _activation(name: str):
  if name == "gelu_pytorch_tanh":
    return lambda x: nn.gelu(x, approximate=True)
  if name == "gelu":
    return lambda x: nn.gelu(x, approximate=False)
  raise ValueError(f"unsupported SigLIP2 hidden_act {name!r}; choose one of {HIDDEN_ACTS}")


def antialias_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """Row-stochastic ``[out, in]`` matrix of torch's ``interpolate(mode='bilinear', antialias=True,
  align_corners=False)`` along one axis.

  For output i the filter is centred at ``scale * (i + 0.5)`` (scale = in / out);
  when down-sampling the triangle is widened by ``scale`` (support ``scale``),
  the taps cover ``[int(center - support + 0.5), int(center + support + 0.5))``
  clipped to the input, and the weights are normalised to sum to 1. Up-sampling
  is plain bilinear.
  """
  scale = in_size / out_size
  support = scale if scale >= 1.0 else 1.0
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    taps = np.arange(xmin, xmax)
    w = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) * invscale))
    if w.sum() != 0.0:
      w = w / w.sum()
    weights[i, xmin:xmax] = w
  return weights


def resize_position_table(table_nd: jax.Array, height: int, width: int, precision: Any = None) -> jax.Array:
  """Position table ``[s*s, W]`` (row-major s x s grid) -> ``[height*width, W]``, antialiased bilinear, float32."""
  n, d = table_nd.shape
  side = int(round(n ** 0.5))
  if side * side != n:
    raise ValueError(f"position table with {n} rows is not a square grid")
  grid = table_nd.astype(jnp.float32).reshape(side, side, d)
  wh = jnp.asarray(antialias_bilinear_weights(side, height), jnp.float32)
  ww = jnp.asarray(antialias_bilinear_weights(side, width), jnp.float32)
  out = jnp.einsum("hs,stc->htc", wh, grid, precision=precision)
  out = jnp.einsum("wt,htc->hwc", ww, out, precision=precision)
  return out.reshape(height * width, d)


def patchify(images_bhwc: jax.Array, patch_size: int) -> jax.Array:
  """NHWC images -> ``[B, (H/p)*(W/p), p*p*C]`` patches, (p1, p2, c) order with c fastest."""
  b, h, w, c = images_bhwc.shape
  if h % patch_size or w % patch_size:
    raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch_size}")
  x = images_bhwc.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch_size) * (w // patch_size), patch_size * patch_size * c)


class SiglipEmbeddings(nn.Module):
  """``patch_embedding`` (Linear over flattened patches) + the resized ``position_embedding`` table."""

  width: int
  num_patches: int
  patch_size: int = 16
  num_channels: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, patches_bnp: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    if patches_bnp.shape[-1] != self.patch_size * self.patch_size * self.num_channels:
      raise ValueError(f"patches of {patches_bnp.shape[-1]} values, expected "
                       f"{self.patch_size}*{self.patch_size}*{self.num_channels}")
    x = dense(self.width, ("conv_in", "embed"), name="patch_embedding", **kw)(patches_bnp.astype(self.dtype))
    table = nn.Embed(self.num_patches, self.width, param_dtype=self.param_dtype, name="position_embedding",
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("length", "embed")))
    pos = resize_position_table(table.embedding, grid_hw[0], grid_hw[1], self.precision)
    self.sow("intermediates", "enc_pos_resized", pos)
    return x + pos.astype(self.dtype)[None]


class SiglipAttention(nn.Module):
  width: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bnd: jax.Array) -> jax.Array:
    b, n, _ = x_bnd.shape
    hd = self.width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    q, k, v = (dense(self.width, ("embed", "qkv"), name=f"{t}_proj", **kw)(x_bnd).reshape(b, n, self.num_heads, hd)
               for t in ("q", "k", "v"))
    out = dot_product_attention(q, k, v, precision=self.precision).reshape(b, n, self.width)
    return dense(self.width, ("attn_out", "embed"), name="out_proj", **kw)(out)


class SiglipMLP(nn.Module):
  width: int
  hidden: int
  hidden_act: str = "gelu_pytorch_tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    x = dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    return dense(self.width, ("mlp", "embed"), name="fc2", **kw)(_activation(self.hidden_act)(x))


class SiglipEncoderLayer(nn.Module):
  width: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    norm = lambda name: layer_norm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    x = x + SiglipAttention(self.width, self.num_heads, name="self_attn", **kw)(norm("layer_norm1")(x))
    return x + SiglipMLP(self.width, self.mlp_dim, self.hidden_act, name="mlp", **kw)(norm("layer_norm2")(x))


class SiglipEncoder(nn.Module):
  """A stack of ``layers_<i>``; sows ``enc_<tag>_layer<i>`` after each layer."""

  width: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  tag: str
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x = SiglipEncoderLayer(self.width, self.num_heads, self.mlp_dim, self.layer_norm_eps, self.hidden_act,
                             self.dtype, self.param_dtype, self.precision, name=f"layers_{i}")(x)
      self.sow("intermediates", f"enc_{self.tag}_layer{i}", x)
    return x


class SiglipPoolingHead(nn.Module):
  """SigLIP2's attention-pooling head (``probe``, ``attention`` = ``torch.nn.MultiheadAttention``,
  ``layernorm``, ``mlp``). Part of the released state dict; BAR never runs it."""

  width: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bnd: jax.Array) -> jax.Array:
    b = x_bnd.shape[0]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "embed")),
                       (1, 1, self.width), self.param_dtype)
    query = jnp.broadcast_to(probe.astype(self.dtype), (b, 1, self.width))
    h = _PackedCrossAttention(self.width, self.num_heads, name="attention", **kw)(query, x_bnd)
    h = h + SiglipMLP(self.width, self.mlp_dim, self.hidden_act, name="mlp", **kw)(
        layer_norm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="layernorm")(h))
    return h[:, 0]


class _PackedCrossAttention(nn.Module):
  """``torch.nn.MultiheadAttention`` (batch first): ``in_proj`` packs [q; k; v], ``out_proj``."""

  width: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, q_bqd: jax.Array, kv_bkd: jax.Array) -> jax.Array:
    hd = self.width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    in_proj = dense(3 * self.width, ("embed", "qkv"), name="in_proj", **kw)
    w = self.width
    q = in_proj(q_bqd)[..., :w]
    kv = in_proj(kv_bkd)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.num_heads, hd)
    out = dot_product_attention(split(q), split(kv[..., w:2 * w]), split(kv[..., 2 * w:]), precision=self.precision)
    return dense(w, ("attn_out", "embed"), name="out_proj", **kw)(out.reshape(q.shape[0], q.shape[1], w))


class SiglipVisionTower(nn.Module):
  """The frozen SigLIP2 vision model (``siglip``): ``embeddings``, ``encoder``, ``post_layernorm``, ``head``."""

  width: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  num_patches: int
  patch_size: int = 16
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    self.embeddings = SiglipEmbeddings(self.width, self.num_patches, self.patch_size, self.num_channels, **kw)
    self.encoder = SiglipEncoder(self.width, self.num_layers, self.num_heads, self.mlp_dim, "frozen",
                                 self.layer_norm_eps, self.hidden_act, **kw)
    self.post_layernorm = layer_norm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    self.head = SiglipPoolingHead(self.width, self.num_heads, self.mlp_dim, self.layer_norm_eps, self.hidden_act,
                                  **kw)

  def embed(self, patches_bnp: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    return self.embeddings(patches_bnp, grid_hw)

  def frozen_features(self, hidden_bnd: jax.Array) -> jax.Array:
    return self.post_layernorm(self.encoder(hidden_bnd))

  def pool(self, features_bnd: jax.Array) -> jax.Array:
    return self.head(features_bnd)

  def __call__(self, patches_bnp: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    return self.frozen_features(self.embed(patches_bnp, grid_hw))


class BarSiglip2Encoder(nn.Module):
  """NHWC images in [-1, 1] -> (``z`` ``[B, h*w, W]`` from the trainable copy, ``clip_gt`` from the frozen one).

  ``return_clip_gt=False`` skips the frozen stack (pre-tokenizing needs only
  ``z``); ``clip_gt`` is then None. While initialising, every part (frozen
  stack and pooling head included) is traced so that the tree is complete.
  """

  width: int = 1152
  num_layers: int = 27
  num_heads: int = 16
  mlp_dim: int = 4304
  num_patches: int = 256
  patch_size: int = 16
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    self.siglip = SiglipVisionTower(self.width, self.num_layers, self.num_heads, self.mlp_dim, self.num_patches,
                                    self.patch_size, self.num_channels, self.layer_norm_eps, self.hidden_act, **kw)
    self.trainable_encoder = SiglipEncoder(self.width, self.num_layers, self.num_heads, self.mlp_dim, "trainable",
                                           self.layer_norm_eps, self.hidden_act, **kw)
    self.trainable_post_layernorm = layer_norm(self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, images_bhwc: jax.Array, return_clip_gt: bool = True) -> tuple[jax.Array, jax.Array | None]:
    p = self.patch_size
    grid = (images_bhwc.shape[1] // p, images_bhwc.shape[2] // p)
    patches = patchify(images_bhwc, p)
    self.sow("intermediates", "pixel_patches", patches)
    hidden = self.siglip.embed(patches, grid)
    self.sow("intermediates", "enc_embeddings", hidden)
    z = self.trainable_post_layernorm(self.trainable_encoder(hidden))
    self.sow("intermediates", "enc_features", z)
    clip_gt = None
    if return_clip_gt or self.is_initializing():
      clip_gt = self.siglip.frozen_features(hidden)
      self.sow("intermediates", "clip_gt", clip_gt)
      if self.is_initializing():
        self.siglip.pool(clip_gt)  # creates the (unused) pooling head's parameters
    return z, (clip_gt if return_clip_gt else None)
