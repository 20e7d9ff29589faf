"""The FID/IS InceptionV3 feature extractor, NHWC, ported from MaskBit's ``metrics/inception.py``.

MaskBit builds its extractor from torch-fidelity's blocks (the TF1 "2015-12-05"
Inception graph, i.e. the network behind the usual FID numbers) and runs it in
float64. This module reproduces it:

* input ``[B, H, W, 3]`` RGB, uint8 or float holding values in [0, 255] (floats
  are NOT rounded or clipped; the reference only accepts uint8, and a uint8
  image gives exactly the reference's numbers);
* a TensorFlow-1.x bilinear resize to 299 x 299 (:func:`tf1_bilinear_resize`;
  not the half-pixel bilinear of ``jax.image.resize`` / torch), then
  ``(x - 128) / 128``;
* the Inception trunk: every conv is bias-free and followed by BatchNorm
  (eps 1e-3, running statistics) and ReLU; max pools 3x3 stride 2 without
  padding; the A, C and first E blocks average-pool 3x3 / stride 1 / pad 1 with
  ``count_include_pad=False`` (border windows divide by the number of real
  pixels), the second E block (``Mixed_7c``) max-pools 3x3 / stride 1 / pad 1
  instead (the TF graph's quirk), the B and D blocks max-pool 3x3 / stride 2;
* features: ``'64'``, ``'192'``, ``'768'`` are spatial means after the first
  max pool, the second max pool and ``Mixed_6e``; ``'2048'`` the global mean
  after ``Mixed_7c``; ``'logits_unbiased'`` = ``x @ W^T`` of the 1008-way fc
  layer WITHOUT its bias (what the Inception Score uses), and ``'logits'`` =
  ``logits_unbiased + b``.

Dtypes follow the reference: every feature comes back in the compute ``dtype``
except ``'768'``, which the reference casts to float32.

Parity needs float64: build ``InceptionV3(dtype=jnp.float64)`` and run it with
x64 enabled (``jax.config.update("jax_enable_x64", True)`` or inside
``with jax.enable_x64(True):``). In float32 the module works the same way but
differs from the float64 reference by float32 rounding through ~100 layers.

Weights: the PyTorch state dict of ``pt_inception-2015-12-05-6726825d.pth``
(pytorch-fid, which MaskBit loads) or torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` (same tensors, no
``num_batches_tracked``). BatchNorm running statistics live in the flax
collection ``batch_stats`` (``running_mean`` / ``running_var``), the learned
tensors in ``params``; :func:`load_inception_params` returns both as one
variables dict for ``module.apply``. Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from maskbit_jax import paths
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.param_mapping import Buffer, ParamMapping, flax_to_torch_state, torch_state_to_flax
from maskbit_jax.models.layers import KERNEL_AXES

Dtype = Any

INPUT_IMAGE_SIZE = 299
FEATURES = ("64", "192", "768", "2048", "logits_unbiased", "logits")
NUM_LOGITS = 1008
BN_EPS = 1e-3
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)


# ----------------------------------------------------------------------------------------------
# TF1-compatible bilinear resize


def _tf1_axis(in_size: int, out_size: int, align_corners: bool, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Source indices (lo, hi) and weights of one axis, exactly as torch-fidelity's "slow" path.

  The scale is rounded to float32 before use (the reference multiplies by a
  float32 scalar tensor), sample positions are ``i * scale`` (no half-pixel
  offset), ``lo`` truncates and ``hi = min(lo + 1, in - 1)``.
  """
  if align_corners:
    scale = (in_size - 1) / max(1, out_size - 1)
  else:
    scale = in_size / out_size
  scale = jnp.asarray(np.float32(scale), dtype)
  grid = jnp.arange(out_size, dtype=dtype) * scale
  lo = jnp.clip(jnp.floor(grid).astype(jnp.int32), 0, in_size - 1)
  hi = jnp.minimum(lo + 1, in_size - 1)
  frac = grid - lo.astype(dtype)
  return lo, hi, frac


def tf1_bilinear_resize(images_bhwc: jax.Array, size: int | Sequence[int], *, align_corners: bool = False) -> jax.Array:
  """Bilinear resize with TensorFlow 1.x semantics (``tf.image.resize_bilinear``).

  Matches torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``
  (method "slow") that the reference extractor starts with. With
  ``align_corners=False`` output pixel ``i`` samples input position
  ``i * in / out``, i.e. TF1's legacy convention, not the half-pixel centres of
  ``jax.image.resize`` or torch's ``interpolate``; no antialiasing.

  Args:
    images_bhwc: ``[B, H, W, C]`` floating array (float64 under x64 for parity).
    size: output ``(height, width)``, or one int for a square output.
    align_corners: TF1's ``align_corners`` flag.
  Returns:
    ``[B, height, width, C]`` in the input's dtype.
  """
  x = jnp.asarray(images_bhwc)
  if x.ndim != 4:
    raise ValueError(f"tf1_bilinear_resize expects [B, H, W, C], got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"tf1_bilinear_resize expects a floating array, got {x.dtype}")
  out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
  if out_h < 1 or out_w < 1:
    raise ValueError(f"output size must be positive, got {(out_h, out_w)}")
  _, in_h, in_w, _ = x.shape
  y_lo, y_hi, dy = _tf1_axis(in_h, out_h, align_corners, x.dtype)
  x_lo, x_hi, dx = _tf1_axis(in_w, out_w, align_corners, x.dtype)
  rows_lo = jnp.take(x, y_lo, axis=1)
  rows_hi = jnp.take(x, y_hi, axis=1)
  dx = dx[None, None, :, None]
  # Same operation order as the reference: interpolate along W, then along H.
  top = jnp.take(rows_lo, x_lo, axis=2)
  top = top + (jnp.take(rows_lo, x_hi, axis=2) - top) * dx
  bottom = jnp.take(rows_hi, x_lo, axis=2)
  bottom = bottom + (jnp.take(rows_hi, x_hi, axis=2) - bottom) * dx
  return top + (bottom - top) * dy[None, :, None, None]


# ----------------------------------------------------------------------------------------------
# Network


class BatchNormStats(nn.Module):
  """Inference BatchNorm with stored statistics (``torch.nn.BatchNorm2d`` in eval mode).

  ``params``: ``scale`` / ``bias``; ``batch_stats``: ``running_mean`` /
  ``running_var`` (the PyTorch names, so the converter keeps them as they are).
  Computed as the PyTorch CPU kernel does: ``x * a + (bias - mean * a)`` with
  ``a = scale / sqrt(var + eps)``.
  """

  epsilon: float = BN_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    c = x_bhwc.shape[-1]
    norm_init = lambda init: nn.with_logical_partitioning(init, ("norm",))
    scale = self.param("scale", norm_init(nn.initializers.ones_init()), (c,), self.param_dtype)
    bias = self.param("bias", norm_init(nn.initializers.zeros_init()), (c,), self.param_dtype)
    mean = self.variable("batch_stats", "running_mean",
                         norm_init(lambda s: jnp.zeros(s, self.param_dtype)), (c,)).value
    var = self.variable("batch_stats", "running_var",
                        norm_init(lambda s: jnp.ones(s, self.param_dtype)), (c,)).value
    scale, bias, mean, var = (jnp.asarray(v, self.dtype) for v in (scale, bias, mean, var))
    alpha = scale / jnp.sqrt(var + self.epsilon)
    return x_bhwc * alpha + (bias - mean * alpha)


class BasicConv2d(nn.Module):
  """Bias-free conv (explicit symmetric padding, as the PyTorch layer) + BatchNorm(eps 1e-3) + ReLU."""

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
        self.features,
        tuple(self.kernel_size),
        strides=(self.strides, self.strides),
        padding=((ph, ph), (pw, pw)),
        use_bias=False,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        precision=self.precision,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_AXES),
        name="conv",
    )(x_bhwc)
    x = BatchNormStats(dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """``F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)``."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  """``F.max_pool2d(x, 3, stride=2)``: no padding, floor mode."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  def conv(self, name: str, features: int, kernel_size, *, strides: int = 1, padding=(0, 0)) -> BasicConv2d:
    kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    return BasicConv2d(features, kernel_size, strides=strides, padding=tuple(padding), dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision, name=name)


class InceptionA(_Block):
  """35x35 block (Mixed_5b/c/d); pool branch averages without counting the padding."""

  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    b1 = self.conv("branch1x1", 64, 1)(x)
    b5 = self.conv("branch5x5_1", 48, 1)(x)
    b5 = self.conv("branch5x5_2", 64, 5, padding=(2, 2))(b5)
    b3 = self.conv("branch3x3dbl_1", 64, 1)(x)
    b3 = self.conv("branch3x3dbl_2", 96, 3, padding=(1, 1))(b3)
    b3 = self.conv("branch3x3dbl_3", 96, 3, padding=(1, 1))(b3)
    bp = self.conv("branch_pool", self.pool_features, 1)(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """35 -> 17 reduction (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv("branch3x3", 384, 3, strides=2)(x)
    bd = self.conv("branch3x3dbl_1", 64, 1)(x)
    bd = self.conv("branch3x3dbl_2", 96, 3, padding=(1, 1))(bd)
    bd = self.conv("branch3x3dbl_3", 96, 3, strides=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(_Block):
  """17x17 block with factorised 7x7 convs (Mixed_6b..e); average pool without padding counts."""

  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = self.conv("branch1x1", 192, 1)(x)
    b7 = self.conv("branch7x7_1", c7, 1)(x)
    b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
    bd = self.conv("branch7x7dbl_1", c7, 1)(x)
    bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
    bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
    bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
    bp = self.conv("branch_pool", 192, 1)(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """17 -> 8 reduction (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv("branch3x3_1", 192, 1)(x)
    b3 = self.conv("branch3x3_2", 320, 3, strides=2)(b3)
    b7 = self.conv("branch7x7x3_1", 192, 1)(x)
    b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
    b7 = self.conv("branch7x7x3_4", 192, 3, strides=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(_Block):
  """8x8 block (Mixed_7b / Mixed_7c).

  ``max_pool=False`` (``InceptionE_1``, Mixed_7b): the pool branch averages
  3x3 / stride 1 / pad 1 without counting padding. ``max_pool=True``
  (``InceptionE_2``, Mixed_7c): it max-pools 3x3 / stride 1 / pad 1 instead,
  as the TF graph does.
  """

  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = self.conv("branch1x1", 320, 1)(x)
    b3 = self.conv("branch3x3_1", 384, 1)(x)
    b3 = jnp.concatenate([self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                          self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)], axis=-1)
    bd = self.conv("branch3x3dbl_1", 448, 1)(x)
    bd = self.conv("branch3x3dbl_2", 384, 3, padding=(1, 1))(bd)
    bd = jnp.concatenate([self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                          self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_same(x)
    bp = self.conv("branch_pool", 192, 1)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionLogits(nn.Module):
  """The 2048 -> 1008 fc layer, returning the logits without and with its bias."""

  features: int = NUM_LOGITS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x_bd: jax.Array) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab")),
                        (x_bd.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                      (self.features,), self.param_dtype)
    unbiased = jnp.matmul(x_bd, jnp.asarray(kernel, self.dtype), precision=self.precision)
    return unbiased, unbiased + jnp.asarray(bias, self.dtype)[None, :]


# (block name, block class, keyword fields), in network order.
_MIXED_BLOCKS = (
    ("Mixed_5b", InceptionA, dict(pool_features=32)),
    ("Mixed_5c", InceptionA, dict(pool_features=64)),
    ("Mixed_5d", InceptionA, dict(pool_features=64)),
    ("Mixed_6a", InceptionB, {}),
    ("Mixed_6b", InceptionC, dict(channels_7x7=128)),
    ("Mixed_6c", InceptionC, dict(channels_7x7=160)),
    ("Mixed_6d", InceptionC, dict(channels_7x7=160)),
    ("Mixed_6e", InceptionC, dict(channels_7x7=192)),
    ("Mixed_7a", InceptionD, {}),
    ("Mixed_7b", InceptionE, dict(max_pool=False)),
    ("Mixed_7c", InceptionE, dict(max_pool=True)),
)
# BasicConv2d names per block class (used for the ``num_batches_tracked`` buffers).
_BLOCK_CONVS = {
    InceptionA: ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
                 "branch3x3dbl_3", "branch_pool"),
    InceptionB: ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    InceptionC: ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
                 "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    InceptionD: ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
    InceptionE: ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
                 "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
_STEM_CONVS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")


def _x64_enabled() -> bool:
  return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.dtype(jnp.float64)


def _spatial_mean(x_bhwc: jax.Array) -> jax.Array:
  return jnp.mean(x_bhwc, axis=(1, 2))


class InceptionV3(nn.Module):
  """FID/IS InceptionV3 (TF 2015-12-05 graph), returning the six torch-fidelity features.

  Input: ``[B, H, W, 3]`` RGB, uint8 or floating with values in [0, 255]
  (any H, W: everything is resized to 299 x 299 first). Output: a dict with
  ``'64'`` ``[B, 64]``, ``'192'`` ``[B, 192]``, ``'768'`` ``[B, 768]``
  (float32, as in the reference), ``'2048'`` ``[B, 2048]`` (the FID feature),
  ``'logits_unbiased'`` ``[B, 1008]`` (the IS feature) and ``'logits'``
  ``[B, 1008]``, all in ``dtype`` except ``'768'``.

  ``dtype`` is the compute dtype; the reference computes in float64, which
  needs x64 enabled (see the module docstring). ``precision`` applies to every
  conv and the fc matmul; the default "highest" keeps float32 convs in true
  float32 on TPU/GPU.
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images_bhwc: jax.Array) -> dict[str, jax.Array]:
    x = jnp.asarray(images_bhwc)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"InceptionV3 expects RGB images [B, H, W, 3], got shape {x.shape}")
    if not (x.dtype == jnp.uint8 or jnp.issubdtype(x.dtype, jnp.floating)):
      raise ValueError(f"InceptionV3 expects uint8 images or floats in [0, 255], got dtype {x.dtype}")
    if jnp.dtype(self.dtype) == jnp.dtype(jnp.float64) and not _x64_enabled():
      raise ValueError("InceptionV3(dtype=float64) needs x64: call jax.config.update('jax_enable_x64', True) "
                       "or run inside `with jax.enable_x64(True):`")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    def basic(name, features, kernel, **k):
      return BasicConv2d(features, (kernel, kernel), **k, **kw, name=name)

    x = tf1_bilinear_resize(x.astype(self.dtype), (INPUT_IMAGE_SIZE, INPUT_IMAGE_SIZE))
    x = (x - 128) / 128
    x = basic("Conv2d_1a_3x3", 32, 3, strides=2)(x)
    x = basic("Conv2d_2a_3x3", 32, 3)(x)
    x = basic("Conv2d_2b_3x3", 64, 3, padding=(1, 1))(x)
    x = _max_pool_3x3_stride2(x)
    features = {"64": _spatial_mean(x)}
    x = basic("Conv2d_3b_1x1", 80, 1)(x)
    x = basic("Conv2d_4a_3x3", 192, 3)(x)
    x = _max_pool_3x3_stride2(x)
    features["192"] = _spatial_mean(x)
    for name, block, fields in _MIXED_BLOCKS:
      x = block(**fields, **kw, name=name)(x)
      if name == "Mixed_6e":
        features["768"] = _spatial_mean(x).astype(jnp.float32)
    pooled = _spatial_mean(x)
    features["2048"] = pooled
    features["logits_unbiased"], features["logits"] = InceptionLogits(**kw, name="fc")(pooled)
    return features


# ----------------------------------------------------------------------------------------------
# Conversion from the PyTorch state dict

# flax paths start with the collection ('params' / 'batch_stats'); PyTorch keys do not.
INCEPTION_RULES = ((r"^(params|batch_stats)\.", ""),)


def _batch_norm_prefixes() -> list[str]:
  prefixes = [f"{name}.bn" for name in _STEM_CONVS]
  for block_name, block, _ in _MIXED_BLOCKS:
    prefixes += [f"{block_name}.{conv}.bn" for conv in _BLOCK_CONVS[block]]
  return prefixes


def _zero_count() -> np.ndarray:
  return np.zeros((), np.int64)


def inception_param_mapping() -> ParamMapping:
  """Flax variables ``{'params', 'batch_stats'}`` <-> the PyTorch state dict, one-to-one.

  ``params``: conv kernels (``X.conv.weight``, transposed), BatchNorm
  ``scale``/``bias`` (``X.bn.weight``/``bias``), ``fc.kernel``/``bias``
  (``fc.weight`` transposed / ``fc.bias``); ``batch_stats``:
  ``X.bn.running_mean``/``running_var``. The ``X.bn.num_batches_tracked``
  counters are buffers of the mapping (zero; unused at inference):
  :func:`inception_variables_from_state` accepts files with any count or
  without them.
  """
  buffers = {f"{p}.num_batches_tracked": Buffer(_zero_count) for p in _batch_norm_prefixes()}
  return ParamMapping(INCEPTION_RULES, buffers=buffers)


@functools.lru_cache(maxsize=4)
def _abstract_variables(param_dtype_name: str):
  # The variable shapes depend on nothing but the storage dtype.
  module = InceptionV3(param_dtype=jnp.dtype(param_dtype_name))
  dummy = jax.ShapeDtypeStruct((1, INPUT_IMAGE_SIZE, INPUT_IMAGE_SIZE, 3), jnp.uint8)
  return nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy))


def abstract_inception_variables(module: InceptionV3 | None = None):
  """Unboxed ShapeDtypeStructs of the module's ``{'params', 'batch_stats'}`` (no compute)."""
  return _abstract_variables(jnp.dtype((module or InceptionV3()).param_dtype).name)


def inception_variables_from_state(state: Mapping[str, np.ndarray], *, source: str = "checkpoint",
                                   module: InceptionV3 | None = None) -> dict:
  """Strictly converts a PyTorch InceptionV3 state dict into flax variables (numpy leaves).

  Every conv, BatchNorm (weight, bias, running mean and variance) and fc
  tensor must be present with the right shape and nothing else may be;
  ``num_batches_tracked`` entries may be missing (torch-fidelity's file has
  none) and their value is ignored (PyTorch tolerates both the same way), but
  one present must be a scalar of a known BatchNorm.

  Raises:
    CheckpointMismatchError naming every problem.
  """
  mapping = inception_param_mapping()
  state = dict(state)
  for key in mapping.buffers:
    # A non-scalar count is left in place, so the strict check reports its shape.
    if key not in state or np.shape(state[key]) == ():
      state[key] = _zero_count()
  return torch_state_to_flax(state, abstract_inception_variables(module), mapping, source=source)


def load_inception_params(path: str | os.PathLike, *, module: InceptionV3 | None = None) -> dict:
  """Reads the FID Inception weights from a state-dict file and returns flax variables.

  Args:
    path: ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid, what MaskBit
      uses) or torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``;
      any format :func:`maskbit_jax.convert.checkpoint_files.read_state_dict`
      reads (``.pth``/``.bin``, ``.safetensors``, ``.npz``).
  Returns:
    ``{'params': ..., 'batch_stats': ...}`` (numpy arrays) for
    ``InceptionV3(...).apply(variables, images)``.
  Raises:
    FileNotFoundError if the file is missing (nothing is downloaded).
    CheckpointMismatchError if the file is not this network's state dict.
  """
  path = os.fspath(path)
  if not paths.isfile(path):
    raise FileNotFoundError(
        f"Inception weights not found: {path!r}. This port never downloads them: fetch "
        f"{WEIGHTS_FILENAME} from {WEIGHTS_URLS[0]} (or torch-fidelity's copy, {WEIGHTS_URLS[1]}), "
        f"save it anywhere (e.g. ./pretrained/{WEIGHTS_FILENAME}) and pass that path.")
  return inception_variables_from_state(read_state_dict(path), source=path, module=module)


def inception_variables_to_state(variables) -> dict[str, np.ndarray]:
  """Flax variables -> PyTorch-layout state dict (inverse of :func:`inception_variables_from_state`)."""
  return flax_to_torch_state(variables, inception_param_mapping())
