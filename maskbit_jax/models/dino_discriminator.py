"""BAR's tokenizer discriminator: a frozen DINO ViT-S/8 with trainable 1-D conv heads (reference ``DinoDisc``).

Images ``[B, H, W, 3]`` in [-1, 1] -> logits ``[B, n_heads * L]``:

1. ImageNet normalisation written for [-1, 1] inputs (``x * 0.5 / std + (0.5 - mean) / std``), then to
   224 x 224: when both sides exceed 224, half of the calls (training) take one random 224 crop for the
   whole batch and the rest average-pool ("area"); larger images otherwise area-pool, smaller ones are
   up-sampled bicubically (``maskbit_jax.torch_resize``).
2. The frozen DINO ViT (patch 8, width 384, 6 heads, 12 blocks, LayerNorm eps 1e-6, tanh-GELU MLP): a
   "readout" ``patch_tokens + cls_token`` ``[B, L, C]`` is taken after the position embedding and after
   each block in ``key_depths`` (2, 5, 8, 11). The final LayerNorm is never applied.
3. One head per readout, over the token axis: spectral-normalised 1-D conv (k=1) -> ``BatchNormLocal``
   -> LeakyReLU(0.2); a residual block of the same with k=9 and circular padding, ``(f(x) + x) / sqrt 2``;
   a spectral-normalised k=1 conv to one channel. The heads' outputs are concatenated in readout order.

``BatchNormLocal`` normalises with the statistics of "virtual batches": the batch is cut into
``ceil(B / 8)`` equal groups and each channel is standardised over (group members, tokens), biased
variance, eps 1e-6, no running statistics, then an affine map.

Spectral normalisation follows ``torch.nn.utils.spectral_norm`` (one power iteration, eps 1e-12): the
weight ``[out, in, k]`` seen as ``[out, in * k]`` is divided by ``u . W v``. The vectors ``u``, ``v`` live in
the ``spectral`` collection; with ``update_stats`` (the reference's discriminator is always in training
mode, so every call, also the generator's) one power iteration refreshes them first, without gradient.

Parameters: ``backbone`` (never optimised; DINO's published names) and ``heads_<i>`` (the reference's
``heads.<i>``); ``convert.dino_mapping`` maps and loads both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from maskbit_jax import torch_resize
from maskbit_jax.models.vit_block import DecoderBlock

DINO_IMAGE_SIZE = 224
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)
VIRTUAL_BATCH = 8
LEAKY_SLOPE = 0.2
SPECTRAL_EPS = 1e-12
SPECTRAL = "spectral"


# --------------------------------------------------------------------------- input


def normalize_pm1(images_bhwc: jax.Array) -> jax.Array:
  """[-1, 1] images -> ImageNet-normalised (the reference's ``x_scale * x + x_shift``)."""
  scale = (0.5 / IMAGENET_STD).astype(np.float32)
  shift = ((0.5 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
  return jnp.asarray(images_bhwc, jnp.float32) * scale + shift


def resize_to_dino(x_bhwc: jax.Array, size: int = DINO_IMAGE_SIZE, crop_offsets: Any = None) -> jax.Array:
  """To ``size x size``: a crop at ``crop_offsets`` (row, col) if given, else area down / bicubic up."""
  _, h, w, _ = x_bhwc.shape
  if crop_offsets is not None:
    if h <= size or w <= size:
      raise ValueError(f"a {size} crop needs both sides above {size}, got {h}x{w}")
    i, j = crop_offsets
    return jax.lax.dynamic_slice(x_bhwc, (0, i, j, 0), (x_bhwc.shape[0], size, size, x_bhwc.shape[-1]))
  return torch_resize.resize(x_bhwc, size, "area" if h > size else "bicubic")


def random_crop_or_resize(x_bhwc: jax.Array, key: jax.Array | None, size: int = DINO_IMAGE_SIZE) -> jax.Array:
  """The reference's training-time choice: with both sides above ``size``, a coin picks one random crop
  (for the whole batch) or area pooling; otherwise (or ``key=None``) the plain resize."""
  _, h, w, _ = x_bhwc.shape
  if key is None or h <= size or w <= size:
    return resize_to_dino(x_bhwc, size)
  coin, ki, kj = jax.random.split(key, 3)
  offsets = (jax.random.randint(ki, (), 0, h - size + 1), jax.random.randint(kj, (), 0, w - size + 1))
  return jax.lax.cond(jax.random.bernoulli(coin, 0.5), lambda x: resize_to_dino(x, size, offsets),
                      lambda x: resize_to_dino(x, size), x_bhwc)


# --------------------------------------------------------------------------- backbone


class _PatchEmbed(nn.Module):
  width: int
  patch_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc):
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                precision=self.precision, name="proj")(x_bhwc)
    return x.reshape(x.shape[0], -1, self.width)


class DinoBackbone(nn.Module):
  """``FrozenDINOSmallNoDrop``: normalised 224 x 224 images -> the readouts, each ``[B, L, C]`` float32."""

  width: int = 384
  num_heads: int = 6
  mlp_ratio: float = 4.0
  depth: int = 12
  key_depths: tuple[int, ...] = (2, 5, 8, 11)
  patch_size: int = 8
  image_size: int = DINO_IMAGE_SIZE
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> list[jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    grid = self.image_size // self.patch_size
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width), self.param_dtype)
    pos = self.param("pos_embed", nn.initializers.zeros, (1, grid * grid + 1, self.width), self.param_dtype)
    tokens = _PatchEmbed(self.width, self.patch_size, name="patch_embed", **kw)(x_bhwc.astype(self.dtype))
    x = jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width)).astype(jnp.float32),
                         tokens.astype(jnp.float32)], axis=1) + pos.astype(jnp.float32)
    readout = lambda h: (h[:, 1:].astype(jnp.float32) + h[:, :1].astype(jnp.float32))
    outputs = [readout(x)]
    keys = {d for d in self.key_depths if d < self.depth}
    x = x.astype(self.dtype)
    for i in range(max(self.depth, 1 + max(keys))):
      x = DecoderBlock(self.width, self.num_heads, self.mlp_ratio, self.norm_eps, approximate_gelu=True,
                       name=f"blocks_{i}", **kw)(x)
      if i in keys:
        outputs.append(readout(x))
    return outputs


# --------------------------------------------------------------------------- heads


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), SPECTRAL_EPS)


class SpectralConv1d(nn.Module):
  """Spectral-normalised ``Conv1d`` over ``[B, L, C]`` (circular padding ``k // 2``). Kernel ``[k, in, out]``."""

  features: int
  kernel_size: int
  precision: Any = None

  @nn.compact
  def __call__(self, x_blc: jax.Array, update_stats: bool) -> jax.Array:
    k, cin = self.kernel_size, x_blc.shape[-1]
    bound = 1.0 / math.sqrt(cin * k)
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    kernel = self.param("kernel", uniform, (k, cin, self.features))
    bias = self.param("bias", uniform, (self.features,))
    init_vec = lambda n: (lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (n,))))
    u = self.variable(SPECTRAL, "u", init_vec(self.features))
    v = self.variable(SPECTRAL, "v", init_vec(cin * k))
    w_mat = jnp.transpose(kernel, (2, 1, 0)).reshape(self.features, cin * k)  # torch [out, in, k] flattened
    if update_stats and not self.is_initializing():
      w_const = jax.lax.stop_gradient(w_mat)
      hp = jax.lax.Precision.HIGHEST
      v.value = _l2_normalize(jnp.dot(u.value, w_const, precision=hp))
      u.value = _l2_normalize(jnp.dot(w_const, v.value, precision=hp))
    sigma = jnp.dot(u.value, jnp.dot(w_mat, v.value, precision=jax.lax.Precision.HIGHEST),
                    precision=jax.lax.Precision.HIGHEST)
    x = x_blc.astype(jnp.float32)
    if k > 1:
      x = jnp.pad(x, ((0, 0), (k // 2, k // 2), (0, 0)), mode="wrap")
    y = jax.lax.conv_general_dilated(x, kernel / sigma, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"),
                                     precision=self.precision)
    return y + bias


class BatchNormLocal(nn.Module):
  """Per-virtual-batch standardisation of ``[B, L, C]`` (see the module docstring) plus an affine map."""

  eps: float = 1e-6
  virtual_batch: int = VIRTUAL_BATCH

  @nn.compact
  def __call__(self, x_blc: jax.Array) -> jax.Array:
    b, length, c = x_blc.shape
    groups = -(-b // self.virtual_batch)
    if b % groups:
      raise ValueError(f"BatchNormLocal: batch {b} does not split into {groups} equal virtual batches")
    weight = self.param("weight", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    x = x_blc.astype(jnp.float32).reshape(groups, b // groups, length, c)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    x = (x - mean) / jnp.sqrt(var + self.eps)
    return (x * weight + bias).reshape(b, length, c)


class _ConvNormAct(nn.Module):
  kernel_size: int
  norm_eps: float
  precision: Any = None

  @nn.compact
  def __call__(self, x_blc, update_stats):
    x = SpectralConv1d(x_blc.shape[-1], self.kernel_size, self.precision, name="conv")(x_blc, update_stats)
    return nn.leaky_relu(BatchNormLocal(self.norm_eps, name="norm")(x), LEAKY_SLOPE)


class DiscriminatorHead(nn.Module):
  """``[B, L, C]`` readout -> ``[B, L]`` logits."""

  kernel_size: int = 9
  norm_eps: float = 1e-6
  precision: Any = None

  @nn.compact
  def __call__(self, x_blc: jax.Array, update_stats: bool) -> jax.Array:
    x = _ConvNormAct(1, self.norm_eps, self.precision, name="block0")(x_blc, update_stats)
    x = (_ConvNormAct(self.kernel_size, self.norm_eps, self.precision, name="residual")(x, update_stats) + x)
    x = x * np.float32(1.0 / np.sqrt(2.0))
    return SpectralConv1d(1, 1, self.precision, name="out")(x, update_stats)[..., 0]


class DinoDiscriminator(nn.Module):
  """``DinoDisc``: ``(images [B, H, W, 3] in [-1, 1]) -> logits [B, (len(key_depths) + 1) * L]``."""

  width: int = 384
  num_heads: int = 6
  mlp_ratio: float = 4.0
  depth: int = 12
  key_depths: tuple[int, ...] = (2, 5, 8, 11)
  patch_size: int = 8
  kernel_size: int = 9
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, images_bhwc: jax.Array, *, update_stats: bool = True, crop_key: jax.Array | None = None,
               crop_offsets: Any = None) -> jax.Array:
    x = normalize_pm1(images_bhwc)
    x = resize_to_dino(x, crop_offsets=crop_offsets) if crop_offsets is not None else random_crop_or_resize(x, crop_key)
    readouts = DinoBackbone(self.width, self.num_heads, self.mlp_ratio, self.depth, tuple(self.key_depths),
                            self.patch_size, norm_eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                            precision=self.precision, name="backbone")(x)
    return jnp.concatenate(
        [DiscriminatorHead(self.kernel_size, self.norm_eps, self.precision, name=f"heads_{i}")(r, update_stats)
         for i, r in enumerate(readouts)], axis=1)


def discriminator_from_config(config: Any, **kw) -> DinoDiscriminator:
  """The released discriminator (``model.discriminator``: only ``norm_type: bn`` exists in the recipe)."""
  disc = config.get("model", {}).get("discriminator", {}) if hasattr(config, "get") else {}
  norm = disc.get("norm_type", "bn")
  if norm != "bn":
    raise ValueError(f"model.discriminator.norm_type {norm!r} is not implemented (the released recipe uses 'bn')")
  path = str(disc.get("dino_ckpt_path", "dino_vit_small_patch8_224.pth"))
  return DinoDiscriminator(**{"patch_size": 8 if "patch8" in path else 16, **kw})


# --------------------------------------------------------------------------- weights


def abstract_discriminator_variables(module: DinoDiscriminator, batch: int = 1) -> Any:
  """ShapeDtypeStructs of ``{"params", "spectral"}`` (nothing computed)."""
  x = jnp.zeros((batch, DINO_IMAGE_SIZE, DINO_IMAGE_SIZE, 3), jnp.float32)
  return nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x)))


def init_discriminator_variables(module: DinoDiscriminator, key: jax.Array, backbone_params: Any | None = None) -> dict:
  """Fresh heads (torch's default init, random unit ``u``/``v``); the backbone from ``backbone_params`` if given."""
  x = jnp.zeros((1, DINO_IMAGE_SIZE, DINO_IMAGE_SIZE, 3), jnp.float32)
  variables = nn.meta.unbox(jax.jit(module.init)(key, x))
  variables = {"params": dict(variables["params"]), SPECTRAL: variables[SPECTRAL]}
  if backbone_params is not None:
    variables["params"]["backbone"] = backbone_params
  return variables


def head_names(variables: Mapping[str, Any]) -> Sequence[str]:
  return sorted(k for k in variables["params"] if k.startswith("heads_"))
