"""Initial weights of every model we train follow the PyTorch references' distributions.

Expected distributions are written out here from torch's formulas, per
parameter, independently of ``maskbit_jax.models.initializers``:

* VQGAN+ tokenizer and discriminator (the reference re-initialises neither):
  ``nn.Conv2d`` defaults, kernel and bias U(+-1/sqrt(fan_in)), fan_in =
  in_channels * kh * kw; GroupNorm scale 1, bias 0.
* MaskBit generator (``LFQBert._init_weights``): every Linear and Embedding and
  ``pos_emb`` N(0, 0.02) (``trunc_normal_`` cuts at +-2 absolute = +-100 std),
  biases 0, LayerNorm 1/0; the attention in-projection, a parameter of
  ``nn.MultiheadAttention`` and not a Linear, keeps MHA's own xavier_uniform
  (U(+-sqrt(6 / (E + 3E)))) and zero bias.
* BAR generator with its MBM head (``init_weights`` over the whole model, then
  adaLN-Zero): N(0, 0.02) weights, embeddings and tables, zero biases, RMSNorm
  scales 1, adaLN output layers 0, the frozen Fourier frequencies N(0, 1).

Each model is built from its released config; the transformers with depth 1
(and a 1-layer MBM head) at full width, after checking on ``jax.eval_shape``
of the full model that depth 1 holds every parameter kind. Per kind, values
are divided by their expected scale and pooled: std within 5 standard errors
of U(-1, 1)'s 1/sqrt(3) or N(0, 1)'s 1 (a lecun_normal conv is off by
sqrt(3)), every uniform inside its bound and the pooled maximum at it, and
for normals the share beyond 2 std at 4.55 % (a truncated normal has none).
Every tensor's own std is checked within 6 standard errors too.

Measured on CPU (seed 0; pooled std of the normalised values; 2 cores: ~20 s):
tokenizer conv kernels 0.5773 / biases 0.5774 (1/sqrt(3) = 0.5774), max|w|/bound
1.0000; discriminator kernels 0.5773, biases 0.576; generator N(0.02) kernels
0.99998, tails 4.55 %; in_proj xavier 0.5773; BAR kernels 1.0000, tails 4.55 %.
"""

from __future__ import annotations

import collections
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from maskbit_jax.bar_config import bar_fields
from maskbit_jax.config import load_config
from maskbit_jax.generator import generator_fields
from maskbit_jax.models.bar_generator import abstract_bar_params, build_bar_module, init_bar_params
from maskbit_jax.models.discriminator import build_discriminator, init_discriminator_params
from maskbit_jax.models.maskbit_transformer import (abstract_generator_params, build_generator_module,
                                                    init_generator_params)
from maskbit_jax.models.tokenizer import abstract_tokenizer_params, build_tokenizer_module, init_tokenizer_params
from conftest import REPO

UNIFORM_STD = 1 / math.sqrt(3)
NORMAL_TAIL = math.erfc(2 / math.sqrt(2))  # P(|z| > 2) = 0.0455


def _flat(params) -> dict[tuple[str, ...], np.ndarray]:
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def _conv_expectations(params) -> dict:
  """torch ``nn.Conv2d`` / ``nn.GroupNorm`` defaults for every parameter of a conv model."""
  flat, out = _flat(params), {}
  for path, value in flat.items():
    parent, leaf = path[:-1], path[-1]
    if leaf == "kernel":
      kh, kw, cin, _ = value.shape
      out[path] = ("conv_kernel", "uniform", 1 / math.sqrt(kh * kw * cin))
    elif leaf == "bias" and parent + ("kernel",) in flat:
      kh, kw, cin, _ = flat[parent + ("kernel",)].shape
      out[path] = ("conv_bias", "uniform", 1 / math.sqrt(kh * kw * cin))
    elif leaf == "scale":
      out[path] = ("norm_scale", "const", 1.0)
    elif leaf == "bias":
      out[path] = ("norm_bias", "const", 0.0)
    else:
      raise AssertionError(f"unexpected parameter {path}")
  return out


def _generator_expectations(params) -> dict:
  flat, out = _flat(params), {}
  for path, value in flat.items():
    parent, leaf = path[:-1], path[-1]
    if leaf == "kernel" and parent[-1] == "in_proj":
      fan_in, fan_out = value.shape[-2:]  # [layers, E, 3E] under the scan: each layer's own fans
      out[path] = ("mha_in_proj", "uniform", math.sqrt(6 / (fan_in + fan_out)))
    elif leaf in ("kernel", "embedding", "pos_emb"):
      out[path] = ("linear_embedding", "normal", 0.02)
    elif leaf == "bias":
      out[path] = ("bias", "const", 0.0)
    elif leaf == "scale":
      out[path] = ("norm_scale", "const", 1.0)
    else:
      raise AssertionError(f"unexpected parameter {path}")
  return out


def _bar_expectations(params) -> dict:
  out = {}
  for path, _ in _flat(params).items():
    parent, leaf = path[:-1], path[-1]
    if parent and parent[-1] == "adaLN_modulation_1":
      out[path] = ("adaln_zero", "const", 0.0)
    elif leaf == "W":
      out[path] = ("fourier", "normal", 1.0)
    elif leaf in ("kernel", "embedding", "cls_token", "pos_embed", "target_aware_pos_embed", "timesteps_embeddings"):
      out[path] = ("linear_embedding", "normal", 0.02)
    elif leaf == "bias":
      out[path] = ("bias", "const", 0.0)
    elif leaf == "scale":
      out[path] = ("norm_scale", "const", 1.0)
    else:
      raise AssertionError(f"unexpected parameter {path}")
  return out


def _moments(z: np.ndarray) -> np.ndarray:
  """``[n, sum z, sum z^2, max |z|, #(|z| > 2)]`` of float32 values, sums in float64."""
  a = np.abs(z)
  return np.array([z.size, np.sum(z, dtype=np.float64), np.sum(np.square(z), dtype=np.float64), a.max(),
                   np.count_nonzero(a > 2)])


def check_distributions(params, expectations) -> dict:
  """Asserts every expectation; returns ``{kind: (pooled std, max |z| or tail share, n)}`` of the normalised values."""
  flat = _flat(params)
  assert set(flat) == set(expectations)
  pooled = collections.defaultdict(lambda: np.zeros(5))
  for path, value in flat.items():
    kind, family, scale = expectations[path]
    assert value.dtype == np.float32, path
    if family == "const":
      np.testing.assert_array_equal(value, np.full_like(value, scale), err_msg=str(path))
      continue
    m = _moments(value.ravel() / np.float32(scale))
    n, std = m[0], math.sqrt(max(m[2] / m[0] - (m[1] / m[0]) ** 2, 0.0))
    if family == "uniform":
      assert m[3] <= 1 + 1e-6, f"{path}: outside U(+-{scale:.4g})"
      # std error of a sample std: 0.447 std / sqrt(n) for a uniform, std / sqrt(2n) for a normal
      assert abs(std - UNIFORM_STD) < 6 * 0.447 * UNIFORM_STD / math.sqrt(n) + 1e-6, f"{path}: std {std * scale:.4g}"
    else:
      assert abs(std - 1) < 6 / math.sqrt(2 * n), f"{path}: std {std * scale:.4g} != {scale}"
    acc = pooled[(kind, family)]
    acc[[0, 1, 2, 4]] += m[[0, 1, 2, 4]]
    acc[3] = max(acc[3], m[3])
  stats = {}
  for (kind, family), (n, s1, s2, top, beyond) in pooled.items():
    mean, std = s1 / n, math.sqrt(max(s2 / n - (s1 / n) ** 2, 0.0))
    if family == "uniform":
      assert abs(mean) < 5 * UNIFORM_STD / math.sqrt(n), kind
      assert abs(std - UNIFORM_STD) < 5 * 0.447 * UNIFORM_STD / math.sqrt(n), (kind, std)
      assert top > 1 - 20 / n, kind  # reaches its bound: uniform, not a bell
      stats[kind] = (std, float(top), int(n))
    else:
      tail = float(beyond / n)
      assert abs(mean) < 5 / math.sqrt(n), kind
      assert abs(std - 1) < 5 / math.sqrt(2 * n), (kind, std)
      assert abs(tail - NORMAL_TAIL) < 5 * math.sqrt(NORMAL_TAIL * (1 - NORMAL_TAIL) / n), (kind, tail)
      stats[kind] = (std, tail, int(n))
  print(dict(stats))
  return stats


def _config(name: str):
  return load_config(str(REPO / "configs" / f"{name}.py"))


def _kinds(abstract) -> set:
  """Parameter paths with layer indices dropped (``transformer_layers_7_0`` -> ``transformer_layers_N_0``)."""
  return {tuple(re.sub(r"(?<=_)\d+(?=_|$)", "N", p) for p in path)
          for path in traverse_util.flatten_dict(nn.meta.unbox(abstract))}


@pytest.fixture(scope="module")
def tokenizer_cfg():
  return _config("maskbit_tokenizer_12bit")


def test_tokenizer(tokenizer_cfg):
  full = build_tokenizer_module(tokenizer_cfg.model.vq_model)
  module = full.clone(num_res_blocks=1, num_res_blocks_decoder=1)
  assert _kinds(abstract_tokenizer_params(module)) == _kinds(abstract_tokenizer_params(full))
  params = init_tokenizer_params(module, jax.random.key(0))
  stats = check_distributions(params, _conv_expectations(params))
  assert set(stats) == {"conv_kernel", "conv_bias"}


def test_discriminator(tokenizer_cfg):
  params = init_discriminator_params(build_discriminator(tokenizer_cfg.model.discriminator), jax.random.key(0))
  stats = check_distributions(params, _conv_expectations(params))
  assert set(stats) == {"conv_kernel", "conv_bias"}


def test_vq_codebook():
  """The VQ tokenizer's codebook: the reference's explicit ``uniform_(-1/n, 1/n)``."""
  module = build_tokenizer_module(_config("vqgan_plus_12bit").model.vq_model).quantize
  params = module.init(jax.random.key(0), jnp.zeros((1, 1, 1, module.token_size)))["params"]
  table = np.asarray(nn.meta.unbox(params)["embedding"]["embedding"])
  stats = check_distributions({"t": table}, {("t",): ("codebook", "uniform", 1 / module.codebook_size)})
  assert stats["codebook"][2] == table.size


def test_maskbit_generator():
  full = build_generator_module(generator_fields(_config("maskbit_generator_12bit")))
  module = full.clone(depth=1)
  assert _kinds(abstract_generator_params(module)) == _kinds(abstract_generator_params(full))
  params = init_generator_params(module, jax.random.key(0))
  stats = check_distributions(params, _generator_expectations(params))
  assert set(stats) == {"mha_in_proj", "linear_embedding"}


def test_bar_generator():
  full = build_bar_module(bar_fields(_config("bar_b")))
  module = full.clone(depth=1, head_layers=1)
  assert _kinds(abstract_bar_params(module)) == _kinds(abstract_bar_params(full))
  params = init_bar_params(module, jax.random.key(0))
  stats = check_distributions(params, _bar_expectations(params))
  assert set(stats) == {"linear_embedding", "fourier"}
