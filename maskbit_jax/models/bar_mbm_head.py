"""The masked-bit-modelling (MBM) head of BAR, and the layers the BAR backbone shares with it.

The head predicts the k bits of one AR step from the backbone's latent
condition ``z`` [N, W]. It is a per-row MLP (no attention across bits):

* input: each of the k bits (0, 1 or MASK = 2) through ``Embedding(3, e)``,
  ``e = ceil(W / k)``, concatenated bit-major, ``Linear(k e -> W)``, RMSNorm;
* condition: ``s = SiLU(z + t_emb(r))``, with ``t_emb`` a Gaussian-Fourier
  embedding of the mask ratio ``r`` (``[sin, cos](2 pi r w)`` over 256 fixed
  frequencies, then Linear-SiLU-Linear);
* ``num_layers`` residual blocks ``x + gate * SwiGLU(modulate(RMSNorm(x)))``
  whose adaLN Linear takes ``SiLU(s)`` (SiLU applied twice: the reference's
  ``nn.Sequential(SiLU, Linear)`` on an already activated ``s``);
* a final modulated RMSNorm (chunks scale | shift, no gate) and
  ``Linear(W -> 2 k)``: two logits per bit, columns ``2j, 2j+1`` for bit j.

Training masks a logit-normal fraction of the bits (``models.mbm_masking``)
and weights the per-bit cross-entropy 1.0 on masked bits, 0.1 on visible ones
(``losses.bar_mbm_loss``). Parameter names follow the PyTorch module (see
``maskbit_jax.convert.bar_mapping``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

# BAR's init_weights (trunc_normal_(0.02) on every Linear and Embedding, zero biases, norms at one)
# are these layers' defaults.
from maskbit_jax.models.layers import RMSNorm, dense, embed

FOURIER_SIZE = 256
# Suffix of a sow name that would clash with a sub-module of the same name (e.g. the output of the
# ``input_proj`` Linear, sown from its parent); ``collect_intermediates`` strips it.
OUT = "__out"


def swiglu_hidden(dim: int) -> int:
  """SwiGLU hidden width of the reference: ``int(2/3 * int(4 dim))`` (2048 for 768, 5461 for 2048)."""
  return int(2 / 3 * int(dim * 4.0))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale) + shift


class SwiGLU(nn.Module):
  """``w3(silu(x1) * x2)`` with ``x1, x2`` the halves of one Linear ``w12``; dropout before ``w3``."""

  hidden: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    x1, x2 = jnp.split(dense(2 * self.hidden, ("embed", "mlp"), "w12", **kw)(x), 2, axis=-1)
    h = nn.Dropout(self.dropout)(nn.silu(x1) * x2, deterministic=deterministic)
    return dense(x.shape[-1], ("mlp", "embed"), "w3", **kw)(h)


def collect_intermediates(tree, skip: tuple[str, ...] = ()) -> dict:
  """``{sow name: array}`` from an ``intermediates`` collection (the last value sown under each name).

  Every module sows under a globally unique name (``block0_adaln``, ...), so
  the module path is dropped, and so is the suffix ``OUT``. Sub-trees whose path contains a name in ``skip``
  (e.g. ``lm_head`` inside the generator) are left out.
  """
  out = {}
  for path, value in traverse_util.flatten_dict(dict(tree)).items():
    if any(p in skip for p in path[:-1]):
      continue
    name = path[-1].removesuffix(OUT)
    if name in out:
      raise ValueError(f"intermediate {name!r} is sown twice ({path})")
    out[name] = value[-1] if isinstance(value, tuple) else value
  return out


class FourierEmbedding(nn.Module):
  """Gaussian-Fourier embedding of the mask ratio: ``[sin, cos](2 pi r w)``, then Linear-SiLU-Linear.

  The frequencies ``W`` are a frozen parameter (``requires_grad=False`` in the
  reference: in the state dict, in no optimizer group); the gradient is
  stopped here, so optimizers leave it unchanged.
  """

  width: int
  size: int = FOURIER_SIZE
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, ratio_n: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    w = self.param("W", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("fourier",)),
                   (self.size,), self.param_dtype)
    w = jax.lax.stop_gradient(w).astype(jnp.float32)
    # Same float32 operation order as the reference: ((r * w) * 2) * pi.
    t = ratio_n.astype(jnp.float32)[:, None] * w[None, :] * 2.0 * np.float32(np.pi)
    features = jnp.concatenate([jnp.sin(t), jnp.cos(t)], axis=-1)
    self.sow("intermediates", "t_fourier", features)
    h = dense(self.width, ("fourier", "embed"), "mlp_0", **kw)(features.astype(self.dtype))
    return dense(self.width, ("mlp", "embed"), "mlp_2", **kw)(nn.silu(h))


class AdaLNResBlock(nn.Module):
  """``x + gate * SwiGLU(modulate(RMSNorm(x), shift, scale))``; adaLN chunks shift | scale | gate."""

  width: int
  tag: str
  zero_init: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, s: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    ada = dense(3 * self.width, ("embed", "mlp"), "adaLN_modulation_1", zero_init=self.zero_init, **kw)(nn.silu(s))
    self.sow("intermediates", f"{self.tag}_adaln", ada)
    shift, scale, gate = jnp.split(ada, 3, axis=-1)
    h = modulate(RMSNorm(param_dtype=self.param_dtype, name="in_ln")(x), shift, scale)
    h = SwiGLU(swiglu_hidden(self.width), name="mlp", **kw)(h)
    self.sow("intermediates", f"{self.tag}_mlp", h)
    x = x + gate * h
    self.sow("intermediates", self.tag, x)
    return x


class AdaLNFinalLayer(nn.Module):
  """``modulate(RMSNorm(x), shift, scale)`` with adaLN chunks in the order **scale | shift** (no gate)."""

  width: int
  zero_init: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, s: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    ada = dense(2 * self.width, ("embed", "mlp"), "adaLN_modulation_1", zero_init=self.zero_init, **kw)(nn.silu(s))
    self.sow("intermediates", "final_adaln", ada)
    scale, shift = jnp.split(ada, 2, axis=-1)
    x = modulate(RMSNorm(param_dtype=self.param_dtype, name="norm_final")(x), shift, scale)
    self.sow("intermediates", "final_layer", x)
    return x


class MBMHead(nn.Module):
  """``(masked_bits [N, k], z [N, 1, W] or [N, W], mask_ratio [N]) -> logits [N, k, 2]`` (float32).

  ``masked_bits`` hold 0/1 and ``mask_id`` (= ``num_classes``, 2) where masked.
  ``zero_init`` starts every adaLN output Linear at zero (adaLN-Zero, as BAR
  initialises its head); the values of a loaded checkpoint replace it anyway.
  """

  bits: int                 # k: bits predicted per row (the reference's seq_len)
  width: int = 2048
  num_layers: int = 3
  num_classes: int = 2      # target_codebook_size
  zero_init: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @property
  def mask_id(self) -> int:
    return self.num_classes

  @property
  def bit_embed_dim(self) -> int:
    return math.ceil(self.width / self.bits)

  @nn.compact
  def __call__(self, masked_bits_nk: jax.Array, z: jax.Array, mask_ratio_n: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    n = masked_bits_nk.shape[0]
    if masked_bits_nk.shape[-1] != self.bits:
      raise ValueError(f"MBM head expects {self.bits} bits per row, got shape {masked_bits_nk.shape}")
    e = embed(self.num_classes + 1, self.bit_embed_dim, ("vocab", "embed"), "input_embed",
              dtype=self.dtype, param_dtype=self.param_dtype)(masked_bits_nk.astype(jnp.int32))
    self.sow("intermediates", "bit_embed", e)
    x = dense(self.width, ("bits", "embed"), "input_proj", **kw)(e.reshape(n, -1))
    self.sow("intermediates", "input_proj" + OUT, x)
    t_emb = FourierEmbedding(self.width, name="t_embedder", **kw)(mask_ratio_n)
    self.sow("intermediates", "t_emb", t_emb)
    s = nn.silu(t_emb + z.reshape(n, self.width).astype(t_emb.dtype))
    self.sow("intermediates", "s", s)
    x = RMSNorm(param_dtype=self.param_dtype, name="ln_pre")(x)
    self.sow("intermediates", "ln_pre" + OUT, x)
    for i in range(self.num_layers):
      x = AdaLNResBlock(self.width, f"block{i}", self.zero_init, name=f"transformer_{i}", **kw)(x, s)
    x = AdaLNFinalLayer(self.width, self.zero_init, name="adaln_before_head", **kw)(x, s)
    logits = dense(self.bits * self.num_classes, ("embed", "vocab"), "output_embed", **kw)(x)
    return logits.astype(jnp.float32).reshape(n, self.bits, self.num_classes)
