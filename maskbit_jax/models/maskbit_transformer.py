"""The MaskBit generator: a bidirectional transformer on bit tokens (the reference ``LFQBert``).

Each image token of K bits is split into ``codebook_splits`` groups of
b = K / splits bits. The input features are the bits as -1/+1, with every bit
of a masked group set to 0 (no embedding table). A linear projection, a class
token appended AFTER the image tokens, learned position embeddings, post-norm
(or pre-norm) transformer blocks with exact GELU and LayerNorm eps 1e-12, and
a head that predicts, per position and split, logits over the 2^b values.

The blocks run as one ``nn.scan`` (``models.stack``): their parameters are
``transformer_layers/{attn,ffn}/...`` with a leading layer axis, which the
converter maps to the reference's ``transformer.layers.<i>.{0,1}.*``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.bits import indices_to_bits
from maskbit_jax.models import initializers, layers, stack
from maskbit_jax.models.attention import dot_product_attention
from maskbit_jax.models.model_config import MaskBitGeneratorConfig

LAYER_NORM_EPS = 1e-12
# The reference's _init_weights: trunc_normal_(0.02) on every Linear and Embedding (and pos_emb), zero biases.
_INIT = initializers.trunc_normal_02


def token_bits_features(tokens_bnm: jax.Array, bits_per_split: int, mask_token: int) -> jax.Array:
  """Split tokens ``[B, N, M]`` -> bit features ``[B, N, M*b]``: -1/+1, 0 for masked splits.

  Feature m*b + j is bit j of split m, i.e. channel m*b + j of the tokenizer latent.
  """
  bits = indices_to_bits(tokens_bnm, bits_per_split, jnp.float32)
  bits = jnp.where((tokens_bnm == mask_token)[..., None], 0.0, bits)
  return bits.reshape(*tokens_bnm.shape[:-1], -1)


def resolve_attention_impl(impl: str) -> str:
  """"auto": one example at a time on CPU (XLA:CPU runs the [N, N] batched matmuls of
  a whole batch ~40 % slower than a loop over examples), batched elsewhere."""
  if impl == "auto":
    return "per_example" if jax.default_backend() == "cpu" else "batched"
  if impl not in ("batched", "per_example"):
    raise ValueError(f"attention_impl={impl!r}; use auto, batched or per_example")
  return impl


class MultiheadSelfAttention(nn.Module):
  """``torch.nn.MultiheadAttention`` (batch first): packed q/k/v projection, heads as contiguous slices."""

  dim: int
  heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x_bnd: jax.Array, train: bool = False) -> jax.Array:
    b, n, _ = x_bnd.shape
    head_dim = self.dim // self.heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    # in_proj_weight is a Parameter of nn.MultiheadAttention, not a Linear: the reference's
    # _init_weights leaves it at MHA's xavier_uniform (bias zeros); out_proj is a Linear (0.02).
    qkv = layers.dense(3 * self.dim, ("embed", "qkv"), "in_proj", kernel_init=initializers.mha_in_proj_kernel,
                 **kw)(x_bnd)
    q, k, v = (t.reshape(b, n, self.heads, head_dim) for t in jnp.split(qkv, 3, axis=-1))
    attend = lambda *qkv_bnhd, weights_fn=None: dot_product_attention(*qkv_bnhd, precision=self.precision,
                                                                      weights_fn=weights_fn)
    if train and self.dropout > 0.0:
      dropout = nn.Dropout(self.dropout)
      out = attend(q, k, v, weights_fn=lambda w: dropout(w, deterministic=False))
    elif resolve_attention_impl(self.attention_impl) == "per_example":
      out = jax.lax.map(lambda t: attend(*(a[None] for a in t))[0], (q, k, v))
    else:
      out = attend(q, k, v)
    return layers.dense(self.dim, ("attn_out", "embed"), "out_proj", **kw)(out.reshape(b, n, self.dim))


class AttentionBlock(nn.Module):
  dim: int
  heads: int
  dropout: float = 0.0
  use_prenorm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mha = MultiheadSelfAttention(self.dim, self.heads, self.dropout, self.dtype, self.param_dtype, self.precision,
                                 self.attention_impl, name="mha")
    norm = layers.layer_norm(LAYER_NORM_EPS, "norm", dtype=self.dtype, param_dtype=self.param_dtype)
    drop = nn.Dropout(self.dropout)
    if self.use_prenorm:
      return x + drop(mha(norm(x), train), deterministic=not train)
    return norm(x + drop(mha(x, train), deterministic=not train))


class FeedForwardBlock(nn.Module):
  dim: int
  mlp_dim: int
  dropout: float = 0.0
  use_prenorm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    norm = layers.layer_norm(LAYER_NORM_EPS, "norm", dtype=self.dtype, param_dtype=self.param_dtype)

    def net(y):
      y = layers.dense(self.mlp_dim, ("embed", "mlp"), "net_0", **kw)(y)
      y = nn.gelu(y, approximate=False)
      y = layers.dense(self.dim, ("mlp", "embed"), "net_2", **kw)(y)
      return nn.Dropout(self.dropout)(y, deterministic=not train)

    if self.use_prenorm:
      return x + net(norm(x))
    return norm(x + net(x))


class TransformerLayer(nn.Module):
  """One attention block and one feed-forward block: the body of the scan over depth, ``(x, None) -> (x, None)``."""

  dim: int
  heads: int
  mlp_dim: int
  dropout: float = 0.0
  use_prenorm: bool = False
  train: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
    kw = dict(dropout=self.dropout, use_prenorm=self.use_prenorm, dtype=self.dtype, param_dtype=self.param_dtype,
              precision=self.precision)
    x = AttentionBlock(self.dim, self.heads, attention_impl=self.attention_impl, name="attn", **kw)(x, self.train)
    self.sow("intermediates", "layer_attn", x)
    x = FeedForwardBlock(self.dim, self.mlp_dim, name="ffn", **kw)(x, self.train)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    self.sow("intermediates", "layer_ffn", x)
    return x, None


def per_layer_intermediates(intermediates: Mapping[str, Any]) -> dict:
  """The sown values with the scanned ones split per layer: ``layer_attn [L, ...]`` -> ``layer<i>_attn``."""
  out = {k: v for k, v in intermediates.items() if k != "transformer_layers"}
  for name, values in intermediates.get("transformer_layers", {}).items():
    stacked = values[-1]
    for i in range(stacked.shape[0]):
      out[name.replace("layer", f"layer{i}", 1)] = (stacked[i],)
  return out


class MaskBitTransformer(nn.Module):
  """``(tokens [B, N, M], labels [B], drop_label_mask [B] | None) -> logits [B, N, M, 2^b]``.

  ``tokens`` hold split indices in [0, 2^b) and ``mask_token`` (= 2^b) at
  masked entries. ``drop_label_mask`` (True = use the null class ``nclass``)
  is the explicit class-label dropout; ``None`` keeps every label. (The
  reference writes the null class into the label tensor it is handed, and with
  ``drop_label_mask=None`` into every row; we never touch our inputs, and pass
  an all-True mask for that unconditional case.)
  """

  img_size: int = 256
  input_stride: int = 16
  hidden_dim: int = 1024
  depth: int = 24
  heads: int = 16
  mlp_dim: int = 4096
  token_size: int = 12
  codebook_splits: int = 2
  use_prenorm: bool = False
  dropout: float = 0.1
  nclass: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None
  attention_impl: str = "auto"
  remat_policy: str = "none"

  @property
  def seq_len(self) -> int:
    return (self.img_size // self.input_stride) ** 2

  @property
  def bits_per_split(self) -> int:
    return self.token_size // self.codebook_splits

  @property
  def num_classes_per_split(self) -> int:
    return 2 ** self.bits_per_split

  @property
  def mask_token(self) -> int:
    return self.num_classes_per_split

  @property
  def null_label(self) -> int:
    return self.nclass

  @nn.compact
  def __call__(self, tokens_bnm: jax.Array, labels_b: jax.Array, drop_label_mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    b = tokens_bnm.shape[0]
    labels = labels_b.reshape(b).astype(jnp.int32)
    if drop_label_mask is not None:
      labels = jnp.where(drop_label_mask.reshape(b), self.null_label, labels)

    bits = token_bits_features(tokens_bnm, self.bits_per_split, self.mask_token).astype(self.dtype)
    x = layers.dense(self.hidden_dim, ("bits", "embed"), "input_proj", **kw)(bits)
    class_emb = nn.Embed(self.nclass + 1, self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                         embedding_init=nn.with_logical_partitioning(_INIT, ("classes", "embed")), name="class_emb")
    x = jnp.concatenate([x, class_emb(labels)[:, None, :]], axis=1)
    pos_emb = self.param("pos_emb", nn.with_logical_partitioning(_INIT, (None, "length", "embed")),
                         (1, self.seq_len + 1, self.hidden_dim), self.param_dtype)
    x = x + pos_emb.astype(self.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    self.sow("intermediates", "embeddings", x)
    x = layers.layer_norm(LAYER_NORM_EPS, "first_layer_0", dtype=self.dtype, param_dtype=self.param_dtype)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    self.sow("intermediates", "first_layer", x)

    layers_cls = stack.scanned(TransformerLayer, self.depth, in_axes=(nn.broadcast,), remat_policy=self.remat_policy)
    x, _ = layers_cls(self.hidden_dim, self.heads, self.mlp_dim, self.dropout, self.use_prenorm, train,
                      attention_impl=self.attention_impl, name="transformer_layers", **kw)(x, None)
    if self.use_prenorm:
      x = layers.layer_norm(LAYER_NORM_EPS, "final_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
      self.sow("intermediates", "norm_after_transformer", x)

    x = layers.dense(self.hidden_dim, ("embed", "mlp"), "last_layer_0", **kw)(x)
    x = nn.gelu(x, approximate=False)
    x = layers.layer_norm(LAYER_NORM_EPS, "last_layer_2", dtype=self.dtype, param_dtype=self.param_dtype)(x)
    self.sow("intermediates", "last_layer", x)
    logits = layers.dense(self.codebook_splits * self.num_classes_per_split, ("embed", "vocab"), "prediction_layer",
                    **kw)(x)
    logits = logits[:, : self.seq_len].astype(jnp.float32)
    return logits.reshape(b, self.seq_len, self.codebook_splits, self.num_classes_per_split)


GENERATOR_FIELDS = ("img_size", "input_stride", "hidden_dim", "depth", "heads", "mlp_dim", "token_size",
                    "codebook_splits", "use_prenorm", "dropout", "nclass")


def validate_generator_fields(fields: Mapping[str, Any]) -> None:
  missing = [k for k in GENERATOR_FIELDS if k not in fields]
  if missing:
    raise ValueError(f"generator config lacks {missing}")
  k, m = int(fields["token_size"]), int(fields["codebook_splits"])
  if m < 1 or k % m:
    raise ValueError(f"codebook_splits={m} must divide the tokenizer's token_size={k} bits")
  if int(fields["hidden_dim"]) % int(fields["heads"]):
    raise ValueError(f"hidden_dim={fields['hidden_dim']} is not divisible by heads={fields['heads']}")
  if int(fields["img_size"]) % int(fields["input_stride"]):
    raise ValueError(f"img_size={fields['img_size']} is not a multiple of input_stride={fields['input_stride']}")
  if int(fields["nclass"]) < 1:
    raise ValueError("nclass must be >= 1")


def build_generator_module(config: MaskBitGeneratorConfig | Mapping[str, Any], *, dtype: Any = jnp.float32,
                           param_dtype: Any = jnp.float32, precision: Any = None) -> MaskBitTransformer:
  """The flax generator from its typed config (``MaskBitGeneratorConfig.from_config(cfg)``) or the same as
  flat fields (``img_size``, ``hidden_dim``, ..., ``token_size``)."""
  fields = config.fields() if isinstance(config, MaskBitGeneratorConfig) else config
  validate_generator_fields(fields)
  kwargs = {k: fields[k] for k in GENERATOR_FIELDS}
  kwargs = {k: (bool(v) if k == "use_prenorm" else float(v) if k == "dropout" else int(v)) for k, v in kwargs.items()}
  kwargs["remat_policy"] = stack.check_remat_policy(str(fields.get("remat_policy", "none")))
  return MaskBitTransformer(**kwargs, dtype=dtype, param_dtype=param_dtype, precision=precision)


def abstract_generator_params(module: MaskBitTransformer):
  """ShapeDtypeStructs of the (boxed) params; allocates nothing."""
  tokens = jax.ShapeDtypeStruct((1, module.seq_len, module.codebook_splits), jnp.int32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32)
  return jax.eval_shape(lambda t, l: module.init(jax.random.key(0), t, l), tokens, labels)["params"]


def init_generator_params(module: MaskBitTransformer, rng: jax.Array):
  tokens = jnp.full((1, module.seq_len, module.codebook_splits), module.mask_token, jnp.int32)
  return nn.meta.unbox(layers.init_params(module, rng, tokens, jnp.zeros((1,), jnp.int32)))
