"""BAR generator and MBM head parity with the BAR golden fixtures (``MASKBIT_GOLDEN_BAR``).

Every config, shape and case comes from the fixture files (``fixture_configs.json``,
``*_io.npz``, the ``.bin`` checkpoints), so the tests run unchanged on another
fixture set. Tolerances (README section 9): rtol = atol = 1e-4 for activations,
logits and gradients, 1e-5 for losses; bits, masks and indices exact.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from conftest import golden_bar_path, load_npz
from maskbit_jax.bar_config import bar_fields
from maskbit_jax.bar_generator_api import load_bar_params
from maskbit_jax.convert.bar_mapping import (CHECKPOINT_KIND, ROPE_ATOL, bar_flax_to_torch_state, bar_param_mapping,
                                             bar_state_to_flax, mbm_head_flax_to_torch_state)
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.param_mapping import CheckpointMismatchError, flax_to_torch_state, torch_state_to_flax
from maskbit_jax.models.bar_generator import (BarGenerator, abstract_bar_params, backbone_intermediates,
                                              build_bar_module, gather_steps, patchify, rope_tables, unpatchify)
from maskbit_jax.losses.bar_mbm_loss import generator_mbm_loss, mbm_loss
from maskbit_jax.models.bar_mbm_head import MBMHead, collect_intermediates
from maskbit_jax.models.mbm_masking import mbm_masking

TOL = dict(rtol=1e-4, atol=1e-4)
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)


def _fixture_configs() -> dict:
  path = golden_bar_path() / "fixture_configs.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def _generator_names():
  names = [n for n, v in _fixture_configs().items()
           if isinstance(v, dict) and "generator" in v.get("model", {})
           and (golden_bar_path() / f"{n}_io.npz").is_file()]
  return names or ["<no fixtures>"]


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def _close(actual, expected, name, tol=TOL):
  actual = np.asarray(actual)
  assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
  if expected.dtype.kind in "biu":
    np.testing.assert_array_equal(actual, expected, err_msg=name)
  else:
    np.testing.assert_allclose(actual, expected, err_msg=name, **tol)


def load_bar_fixture(golden: pathlib.Path, name: str):
  """(module, params, io) of one generator fixture; params from the ``.bin`` file."""
  cfg = ml_collections.ConfigDict(json.loads((golden / "fixture_configs.json").read_text())[name])
  module = build_bar_module(bar_fields(cfg))
  abstract = nn.meta.unbox(abstract_bar_params(module))
  params = bar_state_to_flax(read_state_dict(golden / f"{name}.bin"), abstract, module, source=f"{name}.bin")
  return module, jax.tree.map(jnp.asarray, params), load_npz(golden / f"{name}_io.npz")


# ---------------------------------------------------------------- MBM head alone

@pytest.fixture(scope="module")
def head_case(golden_bar):
  kwargs = json.loads((golden_bar / "fixture_configs.json").read_text())["mbm_head_tiny"]
  head = MBMHead(bits=kwargs["seq_len"], width=kwargs["width"], num_layers=kwargs["num_layers"],
                 num_classes=kwargs["target_codebook_size"])
  io = load_npz(golden_bar / "mbm_head_tiny_io.npz")
  n, k = io["bits"].shape
  abstract = nn.meta.unbox(jax.eval_shape(head.init, jax.random.key(0), jnp.zeros((n, k), jnp.int32),
                                          jnp.zeros((n, 1, head.width)), jnp.zeros((n,)))["params"])
  state = read_state_dict(golden_bar / "mbm_head_tiny.bin")
  params = jax.tree.map(jnp.asarray, torch_state_to_flax(state, abstract, bar_param_mapping()))
  return head, params, io, state


def test_head_forward_and_every_intermediate(head_case):
  head, params, io, _ = head_case
  np.testing.assert_array_equal(np.where(io["input_mask"], head.mask_id, io["bits"]), io["masked_bits"])
  fn = jax.jit(lambda p, b, z, r: head.apply({"params": p}, b, z, r, mutable=["intermediates"]))
  logits, state = fn(params, io["masked_bits"], io["z"], io["mask_ratio"])
  _close(logits, io["logits"], "logits")
  inter = collect_intermediates(state["intermediates"])
  keys = [k for k in io if k.startswith("inter_")]
  assert keys
  for key in keys:
    assert key[len("inter_"):] in inter, f"the JAX head sows no {key[len('inter_'):]!r}"
    _close(inter[key[len("inter_"):]], io[key], key)


def test_head_training_masking_loss_and_grad(head_case):
  head, params, io, _ = head_case
  ratio, num_masked, masks = mbm_masking(jnp.asarray(io["train_normal_draw"]), jnp.asarray(io["train_uniform"]))
  _close(jax.nn.sigmoid(0.8 * jnp.asarray(io["train_normal_draw"])), io["train_t"], "train_t")
  _close(ratio, io["train_mask_ratio"], "train_mask_ratio")
  _close(np.asarray(num_masked).astype(np.int64), io["train_num_masked"], "train_num_masked")
  _close(np.argsort(io["train_uniform"], axis=-1), io["train_argsort_u"], "train_argsort_u")
  _close(masks, io["train_masks"], "train_masks")
  target = jnp.asarray(io["train_target"])
  masked = jnp.where(masks, head.mask_id, target)
  _close(np.asarray(masked).astype(np.int64), io["train_masked_input"], "train_masked_input")

  def loss_fn(z):
    logits = head.apply({"params": params}, masked, z, ratio)
    loss, terms = mbm_loss(logits, target, masks, return_aux=True)
    ce, weights = terms["per_bit_ce"], terms["loss_weights"]
    return loss, (logits, ce, weights)

  (loss, (logits, ce, weights)), grad_z = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(jnp.asarray(io["z"]))
  _close(logits, io["train_logits"], "train_logits")
  _close(ce, io["train_per_bit_ce"], "train_per_bit_ce")
  _close(weights, io["train_loss_weights"], "train_loss_weights")
  _close(loss, io["train_loss"], "train_loss", LOSS_TOL)
  _close(grad_z, io["train_grad_loss_wrt_z"], "train_grad_loss_wrt_z")


def test_head_state_round_trip(head_case):
  head, params, _, state = head_case
  back = mbm_head_flax_to_torch_state(jax.tree.map(np.asarray, params), head.num_layers)
  assert list(back) == list(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


# ---------------------------------------------------------------- generator

@pytest.fixture(scope="module", params=_generator_names())
def gen_case(request, golden_bar):
  if request.param == "<no fixtures>":
    pytest.skip("no generator fixtures")
  module, params, io = load_bar_fixture(golden_bar, request.param)
  return request.param, module, params, io


@pytest.fixture(scope="module")
def gen_forward(gen_case):
  """The training forward on the fixture inputs with the stored masking draws, and its gradients."""
  _, module, params, io = gen_case
  draws = (jnp.asarray(io["head_normal_draw"]), jnp.asarray(io["head_uniform"]))

  def loss_fn(p):
    forward, state = module.apply({"params": p}, jnp.asarray(io["bits"]), jnp.asarray(io["condition_ids"]),
                                  jnp.asarray(io["orders"]), mask_draws=draws, mutable=["intermediates"])
    loss, aux = generator_mbm_loss(forward)
    return loss, (aux, backbone_intermediates(state["intermediates"]))

  (loss, (aux, inter)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  return loss, aux, inter, grads


def test_condition_ids_and_label_dropout(gen_case):
  name, module, _, io = gen_case
  p = _fixture_configs()[name]["model"]["generator"]["class_label_dropout"]
  np.testing.assert_array_equal(io["label_drop_uniform"] < p, io["label_drop_mask"])
  ids = module.condition_ids(io["labels"], io["label_drop_mask"])
  np.testing.assert_array_equal(np.asarray(ids), io["condition_ids"])
  assert module.none_condition_id == gen_case[2]["embeddings"]["embedding"].shape[0] - 1  # the last row
  assert io["label_drop_mask"].any() and not io["label_drop_mask"].all()


def test_every_backbone_intermediate(gen_case, gen_forward):
  _, _, _, io = gen_case
  inter = gen_forward[2]
  keys = [k for k in io if k.startswith("inter_")]
  assert keys
  for key in keys:
    name = key[len("inter_"):]
    assert name in inter, f"the JAX generator sows no {name!r}"
    _close(inter[name], io[key], key)


def test_head_masking_logits_and_loss(gen_case, gen_forward):
  _, module, _, io = gen_case
  loss, aux = gen_forward[0], gen_forward[1]
  rows = io["head_target"].shape[0]
  assert rows == io["bits"].shape[0] * module.num_steps and io["head_target"].shape[1] == module.step_bits
  pairs = dict(head_target="target", head_conditions="conditions", head_mask_ratio="mask_ratio",
               head_num_masked="num_masked", head_masks="masks", head_masked_input="masked_input",
               head_logits="logits", head_per_bit_ce="per_bit_ce", head_loss_weights="loss_weights")
  for key, ours in pairs.items():
    value = np.asarray(aux[ours]).reshape(io[key].shape)
    _close(value.astype(io[key].dtype) if io[key].dtype.kind in "biu" else value, io[key], key)
  _close(loss, io["loss"], "loss", LOSS_TOL)


def test_gradients_of_every_parameter(golden_bar, gen_case, gen_forward):
  name, _, _, io = gen_case
  grads = flax_to_torch_state(jax.tree.map(np.asarray, gen_forward[3]), bar_param_mapping())
  expected = {k[len("grad."):]: v for k, v in io.items() if k.startswith("grad.")}
  frozen = set(json.loads((golden_bar / "scalars.json").read_text())[f"{name}__not_optimised"])
  assert set(expected) == set(grads) - frozen, "the fixture's gradient set differs from our trainable params"
  for key, value in expected.items():
    _close(grads[key], value, f"grad.{key}")
  for key in frozen:
    assert not np.any(grads[key]), f"{key} is frozen in the reference but gets a gradient"


def test_rope_tables(gen_case):
  _, module, _, io = gen_case
  cos, sin = rope_tables(module.head_dim, module.rope_side, module.prefix_len)
  np.testing.assert_allclose(cos, io["rope_freqs_cos"], rtol=0, atol=ROPE_ATOL)
  np.testing.assert_allclose(sin, io["rope_freqs_sin"], rtol=0, atol=ROPE_ATOL)


def test_sampling_mode_forward(gen_case):
  _, module, params, io = gen_case
  z = jax.jit(lambda p, i, c: module.apply({"params": p}, i, c, method=BarGenerator.latent_conditions))(
      params, io["sampling_mode_ids_steps"], io["sampling_mode_condition_ids"])
  _close(z, io["sampling_mode_z"], "sampling_mode_z")


def _cached_conditions(module, params, ids_gen, cond, orders):
  prefill = jax.jit(lambda p, c, o, cache: module.apply({"params": p}, c, o, cache, method=BarGenerator.prefill))
  decode = jax.jit(lambda p, b, i, c, o, cache: module.apply({"params": p}, b, i, c, o, cache,
                                                             method=BarGenerator.decode))
  z, cache = prefill(params, cond, orders, module.init_cache(cond.shape[0]))
  out = [z]
  for i in range(ids_gen.shape[1]):
    z, cache = decode(params, ids_gen[:, i], jnp.int32(i), cond, orders, cache)
    out.append(z)
  return jnp.stack(out, axis=1)


def test_kv_cached_conditions_equal_full_forward(gen_case):
  """Prefix in one cached pass, then one token per call, with raster and random orders."""
  _, module, params, io = gen_case
  orders = jnp.asarray(io["orders"])
  ids_gen = gather_steps(jnp.asarray(io["inter_input_ids_steps"]), orders)
  cond = jnp.asarray(io["condition_ids"])
  full = jax.jit(lambda p, i, c, o: module.apply({"params": p}, i, c, o, method=BarGenerator.latent_conditions))(
      params, ids_gen, cond, orders)
  cached = _cached_conditions(module, params, ids_gen, cond, orders)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-5)
  # the training forward's head conditions are the same z (minus the last position)
  np.testing.assert_allclose(np.asarray(full[:, :-1]).reshape(io["head_conditions"].shape), io["head_conditions"],
                             **TOL)


def _check_causal(module, params, ids_gen, cond, orders):
  fn = jax.jit(lambda p, i: module.apply({"params": p}, i, cond, orders, method=BarGenerator.latent_conditions))
  base = np.asarray(fn(params, ids_gen))
  steps = ids_gen.shape[1]
  for t in sorted({0, steps // 2, steps - 2}):
    if t < 0:
      continue
    changed = ids_gen.at[:, t + 1:].set(1 - ids_gen[:, t + 1:])      # every later token changes
    out = np.asarray(fn(params, changed))
    # z[:, i] sees tokens < i: z[:, :t+2] must not move, z[:, t+2] must.
    np.testing.assert_allclose(out[:, : t + 2], base[:, : t + 2], rtol=0, atol=1e-6, err_msg=f"t={t}")
    assert np.abs(out[:, t + 2] - base[:, t + 2]).max() > 1e-4


def test_causality(gen_case):
  _, module, params, io = gen_case
  orders = jnp.asarray(io["orders"])
  _check_causal(module, params, gather_steps(jnp.asarray(io["inter_input_ids_steps"]), orders),
                jnp.asarray(io["condition_ids"]), orders)


def test_state_round_trip_and_strictness(golden_bar, gen_case):
  name, module, params, _ = gen_case
  state = read_state_dict(golden_bar / f"{name}.bin")
  back = bar_flax_to_torch_state(jax.tree.map(np.asarray, params), module)
  assert list(back) == list(state), "key order differs from the released state_dict order"
  for key, value in state.items():
    if ".rope." in key:
      np.testing.assert_allclose(back[key], value, rtol=0, atol=ROPE_ATOL, err_msg=key)
    else:
      np.testing.assert_array_equal(back[key], value, err_msg=key)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  first_block = "blocks.0.attn.qkv.weight"
  broken = dict(state)
  del broken["norm.weight"]
  broken["extra.weight"] = np.zeros((2,), np.float32)
  broken[first_block] = np.zeros((3, 3), np.float32)
  broken["blocks.0.attn.rope.freqs_cos"] = state["blocks.0.attn.rope.freqs_cos"] + 1e-3
  del broken["blocks.0.attn.rope.freqs_sin"]
  with pytest.raises(CheckpointMismatchError) as err:
    bar_state_to_flax(broken, abstract, module)
  for fragment in ("'norm.weight'", "'extra.weight'", first_block, "blocks.0.attn.rope.freqs_cos",
                   "blocks.0.attn.rope.freqs_sin"):
    assert fragment in str(err.value)


def test_load_bar_params_from_every_checkpoint_form(golden_bar, gen_case, tmp_path):
  from maskbit_jax import checkpointing

  name, module, params, _ = gen_case
  for source in (golden_bar / f"{name}.bin", golden_bar / f"{name}_state.npz"):
    loaded = load_bar_params(source, module)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
  saved = checkpointing.save_params(tmp_path / "ckpt", jax.tree.map(np.asarray, params), kind=CHECKPOINT_KIND,
                                    config={})
  jax.tree.map(np.testing.assert_array_equal, load_bar_params(saved, module), params)
  other = checkpointing.save_params(tmp_path / "other", jax.tree.map(np.asarray, params), kind="generator", config={})
  with pytest.raises(ValueError, match="generator"):
    load_bar_params(other, module)


# ---------------------------------------------------------------- synthetic: patch size 4, random weights

def _random_params(abstract, seed: int):
  """Random weights in the spirit of the fixture recipe (adaLN-Zero init would make every block the identity)."""
  rng = np.random.default_rng(seed)

  def one(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return jnp.asarray(1 + 0.2 * n)
    if path[-1].key == "bias":
      return jnp.asarray(0.1 * n)
    if path[-1].key == "kernel":
      return jnp.asarray(n / np.sqrt(leaf.shape[0]))
    return jnp.asarray(0.5 * n)

  return jax.tree_util.tree_map_with_path(one, abstract)


def test_patch4_layout_and_cache():
  module = BarGenerator(hidden_size=32, depth=1, num_heads=4, image_seq_len=64, token_bits=3, patch_size=4,
                        num_classes=5, repeat_class_condition=3, head_width=16, head_layers=1)
  assert (module.num_steps, module.step_bits) == (4, 48)
  cells = np.arange(64 * 3).reshape(1, 64, 3)
  steps = np.asarray(patchify(jnp.asarray(cells), module.grid, 4))
  # step 1 is the top-right 4x4 patch; inside it bits run (row-in-patch, col-in-patch, bit)
  np.testing.assert_array_equal(steps[0, 1, :6], [12, 13, 14, 15, 16, 17])
  np.testing.assert_array_equal(steps[0, 1, 12:15], cells[0, 12])
  np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(steps), module.grid, 4)), cells)
  params = _random_params(nn.meta.unbox(abstract_bar_params(module)), seed=0)
  bits = jnp.asarray(np.random.default_rng(2).integers(0, 2, (2, module.num_steps, module.step_bits)), jnp.int32)
  orders = jnp.asarray([[0, 1, 2, 3], [2, 0, 3, 1]], jnp.int32)
  cond = module.condition_ids(jnp.asarray([1, 4]), jnp.asarray([False, True]))
  full = jax.jit(lambda p: module.apply({"params": p}, bits, cond, orders, method=BarGenerator.latent_conditions))(
      params)
  cached = _cached_conditions(module, params, bits, cond, orders)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-5)
  rematted = jax.jit(lambda p: module.clone(remat_policy="full").apply({"params": p}, bits, cond, orders,
                                                                     method=BarGenerator.latent_conditions))(params)
  np.testing.assert_array_equal(np.asarray(rematted), np.asarray(full))


def test_every_param_has_logical_axes_in_the_rules_table():
  from maskbit_jax import sharding

  module = BarGenerator(hidden_size=32, depth=1, num_heads=4, image_seq_len=16, token_bits=2, num_classes=3,
                        repeat_class_condition=2, head_width=16, head_layers=1)
  is_boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
  boxed = abstract_bar_params(module)
  known = {name for name, _ in sharding.RULES}
  for path, leaf in jax.tree_util.tree_leaves_with_path(boxed, is_leaf=is_boxed):
    assert is_boxed(leaf), f"{jax.tree_util.keystr(path)} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
    assert set(leaf.names) - {None} <= known, f"{jax.tree_util.keystr(path)}: {leaf.names} not all in RULES"
  if jax.device_count() >= 8:
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = sharding.logical_to_sharding(boxed, mesh)
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(boxed, is_leaf=is_boxed))
