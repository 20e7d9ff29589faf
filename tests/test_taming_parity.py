"""The original Taming VQGAN against ``taming_recipe_io.npz``, with recipe weights rebuilt in numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import load_npz, nhwc
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
from maskbit_jax.models.tokenizer import abstract_tokenizer_params, build_tokenizer_module
from recipe_weights import recipe_state_dict

IMAGE_TOL = dict(rtol=1e-4, atol=1e-4)
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)
TAMING_CFG = dict(model_class="taming", quantizer_type="lookup", codebook_size=1024, token_size=256)


@pytest.fixture(scope="module")
def taming(golden):
  module = build_tokenizer_module(TAMING_CFG)
  abstract = nn.meta.unbox(abstract_tokenizer_params(module))
  state = recipe_state_dict(golden / "recipe_manifests" / "taming.json")
  params = jax.tree.map(jnp.asarray, torch_state_to_flax(state, abstract, tokenizer_param_mapping(TAMING_CFG)))
  return module, params, load_npz(golden / "taming_recipe_io.npz")


def test_taming_encode(taming):
  module, params, io = taming
  z_q, result = module.apply({"params": params}, nhwc(io["images"]), method="encode")
  np.testing.assert_array_equal(np.asarray(result["min_encoding_indices"]), io["indices"])
  np.testing.assert_allclose(np.asarray(z_q), nhwc(io["z_q"]), **IMAGE_TOL)
  for key in [k for k in io if k.startswith("eval_")]:
    np.testing.assert_allclose(float(result[key[5:]]), float(io[key]), err_msg=key, **LOSS_TOL)


def test_taming_decode(taming):
  module, params, io = taming
  decoded = module.apply({"params": params}, nhwc(io["z_q"]), method="decode")
  np.testing.assert_allclose(np.asarray(decoded), nhwc(io["decoded"]), **IMAGE_TOL)
  from_tokens = module.apply({"params": params}, jnp.asarray(io["indices"], jnp.int32), method="decode_tokens")
  np.testing.assert_allclose(np.asarray(from_tokens), nhwc(io["decoded"]), **IMAGE_TOL)
