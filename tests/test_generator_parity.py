"""MaskBit generator (LFQBert) parity with ``generator_*_io.npz``: bit features, activations, logits.

Tolerance 1e-5 for logits and activations (README section 8), exact for integers.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import golden_path, load_npz
from maskbit_jax.convert.generator_mapping import generator_param_mapping
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.models.maskbit_transformer import (GENERATOR_FIELDS, abstract_generator_params,
                                                    build_generator_module, per_layer_intermediates,
                                                    token_bits_features)

TOL = dict(rtol=1e-5, atol=1e-5)


def _generator_names():
  path = golden_path() / "fixture_configs.json"
  if not path.is_file():
    return ["<no fixtures>"]
  return [n for n in json.loads(path.read_text())["configs"]
          if n.startswith("generator") and (golden_path() / f"{n}_io.npz").is_file()]


@pytest.fixture(scope="module", params=_generator_names())
def case(request, golden, fixture_configs):
  name = request.param
  module = build_generator_module(fixture_configs["configs"][name])
  state = load_npz(golden / f"{name}_state.npz")
  params = torch_state_to_flax(state, nn.meta.unbox(abstract_generator_params(module)),
                               generator_param_mapping(module.bits_per_split))
  return module, jax.tree.map(jnp.asarray, params), load_npz(golden / f"{name}_io.npz")


def _logits(module, params, tokens, labels, drop):
  return np.asarray(module.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(labels),
                                 None if drop is None else jnp.asarray(drop)))


def test_fixture_conventions(case):
  module, _, io = case
  assert module.mask_token == 2 ** (module.token_size // module.codebook_splits)
  assert io["logits"].shape[-2:] == (module.codebook_splits, module.num_classes_per_split)


def test_bit_features(case):
  module, _, io = case
  bits = token_bits_features(jnp.asarray(io["masked_tokens"]), module.bits_per_split, module.mask_token)
  np.testing.assert_array_equal(np.asarray(bits), io["preprocessed_bits"])


def test_masked_logits_and_label_dropout(case):
  module, params, io = case
  np.testing.assert_array_equal(np.where(io["drop_label_mask"], module.null_label, io["labels"]),
                                io["effective_labels"])
  np.testing.assert_allclose(_logits(module, params, io["masked_tokens"], io["labels"], io["drop_label_mask"]),
                             io["logits"], **TOL)


def test_inputs_are_not_mutated(case):
  module, params, io = case
  labels = jnp.asarray(io["labels"])
  before = np.asarray(labels).copy()
  module.apply({"params": params}, jnp.asarray(io["masked_tokens"]), labels, jnp.asarray(io["drop_label_mask"]))
  np.testing.assert_array_equal(np.asarray(labels), before)


def test_unconditional_all_masked_and_clean_cases(case):
  module, params, io = case
  # the reference's drop_label_mask=None writes the null class into every row: all-True here
  all_true = np.ones_like(io["drop_label_mask"])
  np.testing.assert_allclose(_logits(module, params, io["masked_tokens"], io["labels"], all_true),
                             io["logits_drop_none"], **TOL)
  reps = io["all_masked_labels"].shape[0] // io["all_masked_tokens"].shape[0]
  tokens = np.concatenate([io["all_masked_tokens"]] * reps)  # CFG batch: conditional copies, then unconditional
  assert np.all(tokens == module.mask_token)
  np.testing.assert_allclose(_logits(module, params, tokens, io["all_masked_labels"], io["all_masked_drop"]),
                             io["all_masked_logits"], **TOL)
  np.testing.assert_allclose(_logits(module, params, io["tokens_split"], io["labels"], None),
                             io["unmasked_logits"], **TOL)


def test_every_intermediate(case):
  module, params, io = case
  _, state = module.apply({"params": params}, jnp.asarray(io["masked_tokens"]), jnp.asarray(io["labels"]),
                          jnp.asarray(io["drop_label_mask"]), mutable=["intermediates"])
  acts = {k: v[0] for k, v in per_layer_intermediates(state["intermediates"]).items()}
  keys = [k for k in io if k.startswith("inter_")]
  assert keys
  for key in keys:
    name = key[len("inter_"):]
    assert name in acts, f"the JAX generator sows no {name!r}"
    np.testing.assert_allclose(np.asarray(acts[name]), io[key], err_msg=key, **TOL)


def test_attention_implementations_agree(case):
  module, params, io = case
  args = (jnp.asarray(io["masked_tokens"]), jnp.asarray(io["labels"]), jnp.asarray(io["drop_label_mask"]))
  outs = [module.clone(attention_impl=impl).apply({"params": params}, *args) for impl in ("batched", "per_example")]
  np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(outs[1]), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="attention_impl"):
    module.clone(attention_impl="flash").apply({"params": params}, *args)


def test_dropout_only_in_training(case):
  module, params, io = case
  args = (jnp.asarray(io["masked_tokens"]), jnp.asarray(io["labels"]), jnp.asarray(io["drop_label_mask"]))
  drop = module.clone(dropout=0.5)
  evaluated = drop.apply({"params": params}, *args)
  np.testing.assert_allclose(np.asarray(evaluated), io["logits"], **TOL)  # eval mode ignores dropout
  a = drop.apply({"params": params}, *args, train=True, rngs={"dropout": jax.random.key(0)})
  b = drop.apply({"params": params}, *args, train=True, rngs={"dropout": jax.random.key(1)})
  assert np.all(np.isfinite(np.asarray(a))) and not np.allclose(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_policy_keeps_loss_and_gradients(case, policy):
  """Rematerialising the scanned blocks changes what is stored for the backward pass, not the numbers."""
  module, params, io = case
  args = (jnp.asarray(io["masked_tokens"]), jnp.asarray(io["labels"]), jnp.asarray(io["drop_label_mask"]))

  def grads(m):
    loss = lambda p: jnp.sum(jnp.square(m.apply({"params": p}, *args, train=True,
                                                 rngs={"dropout": jax.random.key(0)})))
    return jax.jit(jax.value_and_grad(loss))(params)

  (want_loss, want), (got_loss, got) = grads(module), grads(module.clone(remat_policy=policy))
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
  # recomputed activations fuse differently: float32 rounding, ~1e-6 absolute on gradients of order 10
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5), got,
               want)
  with pytest.raises(ValueError, match="remat_policy"):
    build_generator_module(dict({k: getattr(module, k) for k in GENERATOR_FIELDS}, remat_policy="some"))
