"""End-to-end sampling (generator + sampler + decode) against every trace of ``sampling.npz``.

The traces were made with ``generator_tiny`` and ``tokenizer_tiny`` and stored
noise (README section 5); here the real JAX models run inside the compiled
sampler. Integers exact; logits 1e-5, images 1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import maskbit_jax
from conftest import load_npz, nhwc, tokenizer_config
from maskbit_jax.convert.generator_mapping import generator_param_mapping
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.generator import Generator
from maskbit_jax.models.maskbit_transformer import abstract_generator_params, build_generator_module


@pytest.fixture(scope="module")
def models(golden, fixture_configs):
  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  fields = fixture_configs["configs"]["generator_tiny"]
  module = build_generator_module(fields)
  params = torch_state_to_flax(load_npz(golden / "generator_tiny_state.npz"),
                               nn.meta.unbox(abstract_generator_params(module)),
                               generator_param_mapping(module.bits_per_split))
  gen = Generator(maskbit_jax.load_config({"model": {"mlm_model": {}}}), module, jax.tree.map(jnp.asarray, params))
  return gen, tok, load_npz(golden / "sampling.npz")


def _traces(fixture_configs):
  return {k[len("sampling_"):]: v for k, v in fixture_configs["configs"].items() if k.startswith("sampling_")}


def test_every_trace_end_to_end(models, fixture_configs):
  gen, tok, s = models
  traces = _traces(fixture_configs)
  assert traces
  for name, cfg in traces.items():
    t = f"trace{name}"
    assert cfg["mask_token"] == gen.mask_token and cfg["codebook_splits"] == gen.codebook_splits
    assert cfg["patch_size"] ** 2 == gen.seq_len
    out = maskbit_jax.sample(
        gen, tok, s[f"{t}_labels"], jax.random.key(0), return_trace=True,
        cat_gumbel_noise=s[f"{t}_cat_gumbel_noise"], conf_gumbel_noise=s[f"{t}_conf_gumbel_noise"],
        num_steps=cfg["num_steps"], guidance_scale=cfg["guidance_scale"],
        guidance_annealing=cfg["guidance_annealing"], scale_pow=cfg["scale_pow"],
        randomize_temperature=cfg["randomize_temperature"], softmax_temperature=cfg["softmax_temperature"],
        mask_schedule_strategy=cfg["mask_schedule_strategy"], use_sampling_annealing=cfg["use_sampling_annealing"])
    trace = out["trace"]
    np.testing.assert_array_equal(np.asarray(trace["model_in_tokens"]), s[f"{t}_model_in_tokens"], err_msg=t)
    np.testing.assert_allclose(np.asarray(trace["model_logits"]), s[f"{t}_model_logits"], rtol=1e-5, atol=1e-5,
                               err_msg=t)
    np.testing.assert_array_equal(np.asarray(trace["sampled_raw"]), s[f"{t}_sampled_raw"], err_msg=t)
    np.testing.assert_array_equal(np.asarray(trace["predicted_tokens"]), s[f"{t}_predicted_tokens"], err_msg=t)
    final = s[f"{t}_final_tokens_combined"].astype(np.int64)
    np.testing.assert_array_equal(np.asarray(out["tokens"]).reshape(final.shape), final, err_msg=t)
    np.testing.assert_allclose(np.asarray(out["images"]), nhwc(s[f"{t}_image"]), rtol=1e-4, atol=1e-4, err_msg=t)


def test_sampling_is_deterministic_and_batched(models):
  gen, tok, _ = models
  labels = np.array([1, 7, 282, 999])
  a = maskbit_jax.sample(gen, tok, labels, jax.random.key(3), num_steps=4, guidance_scale=2.0)
  b = maskbit_jax.sample(gen, tok, labels, jax.random.key(3), num_steps=4, guidance_scale=2.0)
  c = maskbit_jax.sample(gen, tok, labels, jax.random.key(4), num_steps=4, guidance_scale=2.0)
  np.testing.assert_array_equal(np.asarray(a["tokens"]), np.asarray(b["tokens"]))
  assert not np.array_equal(np.asarray(a["tokens"]), np.asarray(c["tokens"]))
  side = int(gen.seq_len ** 0.5)
  assert a["tokens"].shape == (4, side, side) and a["tokens"].dtype == jnp.int32
  assert a["images"].shape == (4, side * tok.latent_stride, side * tok.latent_stride, 3)
  assert int(np.max(a["tokens"])) < tok.codebook_size


def test_sharded_sampling_over_devices_matches(models):
  from maskbit_jax.sampling.api import sample_sharded

  gen, tok, _ = models
  labels = np.arange(5)  # not a multiple of the 8 simulated devices
  out = sample_sharded(gen, tok, labels, jax.random.key(1), num_steps=3, guidance_scale=0.0)
  assert out["tokens"].shape[0] == 5 and out["images"].shape[0] == 5


def test_bad_sampling_input(models, fixture_configs):
  gen, tok, _ = models
  nclass, bits = gen.nclass, gen.token_bits  # the fixture generator's, whatever set it was made with
  with pytest.raises(ValueError, match=rf"\[0, {nclass}\)"):
    maskbit_jax.sample(gen, tok, [1, nclass], jax.random.key(0), num_steps=2)
  with pytest.raises(ValueError, match=rf"\[0, {nclass}\)"):
    maskbit_jax.sample(gen, tok, [-1], jax.random.key(0), num_steps=2)
  with pytest.raises(ValueError, match="num_steps"):
    maskbit_jax.sample(gen, tok, [1], jax.random.key(0), num_steps=0)
  other = bits - 2 if bits > 4 else bits + 2
  other_bits = dict(fixture_configs["configs"]["tokenizer_tiny"], token_size=other, codebook_size=2**other)
  tok_other = maskbit_jax.load_tokenizer({"model": {"vq_model": other_bits}}, random_init=True)
  with pytest.raises(ValueError, match=f"{bits}-bit tokens but the tokenizer has {other} bits"):
    maskbit_jax.sample(gen, tok_other, [1], jax.random.key(0), num_steps=2)
  with pytest.raises(TypeError, match="unknown sampling settings"):
    maskbit_jax.sample(gen, tok, [1], jax.random.key(0), num_step=2)


def test_splits_must_divide_bits(fixture_configs):
  fields = fixture_configs["configs"]["generator_tiny"]
  bits = int(fields["token_size"])
  splits = next(m for m in range(2, bits + 2) if bits % m)  # the smallest that does not divide the bits
  with pytest.raises(ValueError, match=f"codebook_splits={splits} must divide the tokenizer's token_size={bits}"):
    build_generator_module(dict(fields, codebook_splits=splits))
  with pytest.raises(ValueError, match="codebook_splits=0 must divide"):
    build_generator_module(dict(fields, codebook_splits=0))
