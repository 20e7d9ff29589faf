"""Tokenizer parity with the PyTorch reference (``<name>_io.npz`` of every fixture tokenizer).

Tolerances from the fixtures' README section 8: rtol = atol = 1e-4 for images
and feature maps, 1e-5 for losses, exact for indices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import golden_path, load_npz, nhwc
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
from maskbit_jax.models.tokenizer import build_tokenizer_module
from maskbit_jax.models.tokenizer import abstract_tokenizer_params

IMAGE_TOL = dict(rtol=1e-4, atol=1e-4)
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)


def _tokenizer_names():
  import json

  path = golden_path() / "fixture_configs.json"
  if not path.is_file():
    return ["<no fixtures>"]
  names = [n for n in json.loads(path.read_text())["configs"] if n.startswith("tokenizer")]
  return [n for n in names if (golden_path() / f"{n}_io.npz").is_file()]


@pytest.fixture(scope="module", params=_tokenizer_names())
def case(request, golden, fixture_configs):
  name = request.param
  cfg = fixture_configs["configs"][name]
  module = build_tokenizer_module(cfg)
  abstract = nn.meta.unbox(abstract_tokenizer_params(module))
  params = torch_state_to_flax(load_npz(golden / f"{name}_state.npz"), abstract, tokenizer_param_mapping(cfg))
  params = jax.tree.map(jnp.asarray, params)
  return name, module, params, load_npz(golden / f"{name}_io.npz")


def _apply(module, params, *args, method, **kw):
  return module.apply({"params": params}, *args, method=method, **kw)


def test_encoder_output(case):
  _, module, params, io = case
  z_e = _apply(module, params, nhwc(io["images"]), method="encode_latents")
  np.testing.assert_allclose(np.asarray(z_e), nhwc(io["z_e"]), **IMAGE_TOL)


def test_quantized_latents_and_indices(case):
  _, module, params, io = case
  z_q, result = _apply(module, params, nhwc(io["images"]), method="encode")
  np.testing.assert_array_equal(np.asarray(result["min_encoding_indices"]), io["indices"])
  np.testing.assert_allclose(np.asarray(z_q), nhwc(io["z_q"]), **LOSS_TOL)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_loss_terms(case, mode):
  _, module, params, io = case
  _, result = _apply(module, params, nhwc(io["images"]), mode == "train", method="encode")
  keys = [k for k in io if k.startswith(f"{mode}_") and io[k].ndim == 0]
  assert keys, f"no {mode}_* scalars in the fixture"
  for key in keys:
    np.testing.assert_allclose(float(result[key[len(mode) + 1:]]), float(io[key]), err_msg=key, **LOSS_TOL)


def test_grad_of_train_quantizer_loss(case):
  _, module, params, io = case
  z_e = jnp.asarray(nhwc(io["z_e"]))
  loss = lambda z: _apply(module, params, z, method=lambda m, z: m.quantize(z, train=True)[1]["quantizer_loss"])
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(z_e)), nhwc(io["train_grad_quantizer_loss_wrt_z_e"]), **LOSS_TOL)


def test_decoded_from_latents_and_indices(case):
  _, module, params, io = case
  decoded = _apply(module, params, nhwc(io["z_q"]), method="decode")
  np.testing.assert_allclose(np.asarray(decoded), nhwc(io["decoded"]), **IMAGE_TOL)
  from_indices = _apply(module, params, jnp.asarray(io["indices"], jnp.int32), method="decode_tokens")
  np.testing.assert_allclose(np.asarray(from_indices), nhwc(io["decoded_from_indices"]), **IMAGE_TOL)
  chained, _ = _apply(module, params, nhwc(io["images"]), method="__call__")
  np.testing.assert_allclose(np.asarray(chained), nhwc(io["decoded"]), **IMAGE_TOL)


def _intermediates(module, params, images):
  def run(m, x):
    z_q, _ = m.encode(x)
    return m.decode(z_q)

  _, state = module.apply({"params": params}, images, method=run, mutable=["intermediates"])
  flat = {}
  for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
    name = [p.key for p in path if hasattr(p, "key")][-1]
    flat[name] = value
  return flat


def test_every_intermediate(case):
  _, module, params, io = case
  keys = [k for k in io if k.startswith("inter0_")]
  if not keys:
    pytest.skip("this fixture stores no intermediates")
  acts = _intermediates(module, params, nhwc(io["images"][:1]))
  for key in keys:
    name = key[len("inter0_"):]
    crop = name.endswith("_crop16")
    name = name.removesuffix("_crop16")
    assert name in acts, f"{key}: the JAX model sows no {name!r} (has {sorted(acts)})"
    got = np.asarray(acts[name])[:1]
    want = nhwc(io[key])
    if crop:
      got = got[:, : want.shape[1], : want.shape[2]]
    np.testing.assert_allclose(got, want, err_msg=key, **IMAGE_TOL)


def test_odd_sized_image(case):
  _, module, params, io = case
  if "odd_images" not in io:
    pytest.skip("this fixture has no odd-sized case")
  z_q, result = _apply(module, params, nhwc(io["odd_images"]), method="encode")
  z_e = _apply(module, params, nhwc(io["odd_images"]), method="encode_latents")
  np.testing.assert_allclose(np.asarray(z_e), nhwc(io["odd_z_e"]), **IMAGE_TOL)
  np.testing.assert_array_equal(np.asarray(result["min_encoding_indices"]), io["odd_indices"])
  decoded = _apply(module, params, z_q, method="decode")
  np.testing.assert_allclose(np.asarray(decoded), nhwc(io["odd_decoded"]), **IMAGE_TOL)
