"""BAR tokenizer (BAR-FSQ) parity with the PyTorch reference: every output and intermediate of ``tokenizer_*_io.npz``,
the binary FSQ on crafted threshold inputs, and the strict converter.

Fixtures come from ``MASKBIT_GOLDEN_BAR`` (default ``<repo>/../shared/golden_bar``); configs, shapes and cases
are read from the fixture files. Tolerances (README section 9): rtol = atol = 1e-4 for activations, images
and gradients; bits exact.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from maskbit_jax.convert.bar_tokenizer_mapping import (
    bar_tokenizer_state_to_flax,
    expected_bar_tokenizer_shapes,
    flax_to_bar_tokenizer_state,
    load_bar_tokenizer_params,
)
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.param_mapping import CheckpointMismatchError
from maskbit_jax.models import bar_fsq
from maskbit_jax.models.bar_tokenizer import BarTokenizer, abstract_bar_tokenizer_params, bar_tokenizer_from_config
from conftest import bar_tokenizer_config, golden_bar_path

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-4, atol=1e-4)


def _tokenizer_names() -> list[str]:
  path = golden_bar_path() / "fixture_configs.json"
  if not path.is_file():
    return ["<no fixtures>"]
  names = [k for k in json.loads(path.read_text()) if k.startswith("tokenizer")]
  return [n for n in names if (golden_bar_path() / f"{n}_io.npz").is_file()] or ["<no fixtures>"]


def _load_npz(path) -> dict:
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def _nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


@pytest.fixture(autouse=True)
def _highest_precision():
  # One precision for every test: parity needs it, and eager ops compiled once are reused.
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module", params=_tokenizer_names())
def case(request):
  golden = golden_bar_path()
  if not (golden / "fixture_configs.json").is_file():
    message = f"BAR golden fixtures not found at {golden} (set MASKBIT_GOLDEN_BAR)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  name = request.param
  configs = json.loads((golden / "fixture_configs.json").read_text())
  cfg = bar_tokenizer_config(configs, name)
  module = bar_tokenizer_from_config(cfg)
  abstract = nn.meta.unbox(abstract_bar_tokenizer_params(module))
  state = _load_npz(golden / f"{name}_state.npz")
  params = jax.tree.map(jnp.asarray, bar_tokenizer_state_to_flax(state, abstract, source=f"{name}_state.npz"))
  io = _load_npz(golden / f"{name}_io.npz")
  with jax.default_matmul_precision("highest"):  # (module-scoped: set up before the autouse fixture)
    (decoded, result), inter = module.apply({"params": params}, _nhwc(io["images"]), mutable=["intermediates"])
  sown = {path[-1]: value[0] for path, value in traverse_util.flatten_dict(inter["intermediates"]).items()}
  scalars = json.loads((golden / "scalars.json").read_text())
  return dict(name=name, cfg=cfg, module=module, abstract=abstract, state=state, params=params, io=io,
              decoded=decoded, result=result, sown=sown, golden=golden, scalars=scalars)


def _as_ours(ref: np.ndarray) -> np.ndarray:
  return _nhwc(ref) if ref.ndim == 4 else ref


def _check_sown(case, keys):
  assert keys, "no such arrays in the fixture"
  for key in keys:
    ours_name = key[len("inter_"):] if key.startswith("inter_") else key
    assert ours_name in case["sown"], f"{key}: not produced by the JAX model"
    np.testing.assert_allclose(np.asarray(case["sown"][ours_name]), _as_ours(case["io"][key]), err_msg=key, **TOL)


# ---------------------------------------------------------------------------
# Checkpoint files and the converter


def test_bin_and_npz_hold_the_same_state(case):
  from_bin = read_state_dict(case["golden"] / f"{case['name']}.bin")
  assert list(from_bin) == list(case["state"])
  for key, value in case["state"].items():
    np.testing.assert_array_equal(from_bin[key], value, err_msg=key)


def test_state_keys_order_and_shapes_map_one_to_one(case):
  shapes = expected_bar_tokenizer_shapes(case["abstract"], case["module"])
  assert list(shapes) == list(case["state"])
  assert {k: tuple(v.shape) for k, v in case["state"].items()} == dict(shapes)


def test_every_param_has_logical_axis_names(case):
  boxed = abstract_bar_tokenizer_params(case["module"])
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == len(leaf.unbox().shape)
  from maskbit_jax import sharding

  devices = jax.devices()
  if len(devices) >= 8:
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices[:8])
    shardings = sharding.logical_to_sharding(boxed, mesh)
    assert len(jax.tree.leaves(shardings)) == len(leaves)


def test_round_trip_to_reference_state(case):
  back = flax_to_bar_tokenizer_state(case["params"], case["module"])
  assert list(back) == list(case["state"])
  for key, value in case["state"].items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_load_from_bin_with_training_wrapper_prefix(case, tmp_path):
  from maskbit_jax.convert.checkpoint_files import write_state_dict

  wrapped = {f"_orig_mod.module.{k}": v for k, v in case["state"].items()}
  path = tmp_path / "wrapped.bin"
  write_state_dict(path, wrapped)
  params = load_bar_tokenizer_params(path, case["abstract"])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(case["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_aliases_fold_onto_one_copy(case):
  state = case["state"]
  alias_keys = [k for k in state if k.startswith(("encoder.frozen_encoder.", "encoder.frozen_post_layernorm."))]
  assert alias_keys
  # Only the alias names present: they serve as the frozen copy.
  only_aliases = {k: v for k, v in state.items()
                  if not k.startswith(("encoder.siglip.encoder.", "encoder.siglip.post_layernorm."))}
  params = bar_tokenizer_state_to_flax(only_aliases, case["abstract"])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(case["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Both present but different: the file is inconsistent.
  bad = dict(state)
  bad[alias_keys[0]] = state[alias_keys[0]] + 1.0
  with pytest.raises(CheckpointMismatchError, match="alias"):
    bar_tokenizer_state_to_flax(bad, case["abstract"])


def test_converter_is_strict(case):
  state = dict(case["state"])
  key = "decoder.conv_out.weight"
  missing = {k: v for k, v in state.items() if k != key}
  with pytest.raises(CheckpointMismatchError, match="missing key 'decoder.conv_out.weight'"):
    bar_tokenizer_state_to_flax(missing, case["abstract"])
  wrong = dict(state, **{key: np.zeros((1,) + state[key].shape, np.float32)})
  with pytest.raises(CheckpointMismatchError, match="shape mismatch for 'decoder.conv_out.weight'"):
    bar_tokenizer_state_to_flax(wrong, case["abstract"])
  extra = dict(state, **{"decoder.extra.weight": np.zeros((2,), np.float32)})
  with pytest.raises(CheckpointMismatchError, match="unexpected key 'decoder.extra.weight'"):
    bar_tokenizer_state_to_flax(extra, case["abstract"])


# ---------------------------------------------------------------------------
# Encoder


def test_encoder_outputs_and_intermediates(case):
  io = case["io"]
  keys = [k for k in io if k.startswith(("inter_pixel", "inter_enc_", "enc_"))] + ["clip_gt"]
  _check_sown(case, keys)
  np.testing.assert_allclose(np.asarray(case["result"]["clip_gt"]), io["clip_gt"], **TOL)
  np.testing.assert_allclose(np.asarray(case["result"]["z"]), io["inter_enc_features"], **TOL)


def test_encode_without_frozen_copy_gives_the_same_bits(case):
  bits = case["module"].apply({"params": case["params"]}, _nhwc(case["io"]["images"]), method=BarTokenizer.encode_bits)
  np.testing.assert_array_equal(np.asarray(bits), case["io"]["bits"])


# ---------------------------------------------------------------------------
# Quantizer


def test_quantizer_outputs(case):
  io, result = case["io"], case["result"]
  np.testing.assert_allclose(np.asarray(result["pre_quant"]), io["inter_fsq_in_proj"], **TOL)
  np.testing.assert_array_equal(np.asarray(result["codes"]), io["inter_fsq_codes"])
  np.testing.assert_array_equal(np.asarray(result["min_encoding_indices"]), io["bits"])
  zq = case["module"].apply({"params": case["params"]}, _nhwc(io["images"]), method=BarTokenizer.encode)[0]
  np.testing.assert_allclose(np.asarray(zq), io["z_quantized"], **TOL)
  # The fixture's own margin: no pre-quantiser value sits near the threshold.
  margin = case["scalars"].get(f"{case['name']}__min_abs_distance_in_proj_to_threshold")
  if margin is not None:
    dist = np.abs(np.asarray(result["pre_quant"], np.float64) + float(bar_fsq.SHIFT)).min()
    np.testing.assert_allclose(dist, margin, atol=1e-4)


def test_fsq_on_crafted_threshold_inputs(case):
  io = case["io"]
  z = jnp.asarray(io["fsq_input"])
  np.testing.assert_array_equal(np.full(io["fsq_shift"].shape, bar_fsq.SHIFT, np.float32), io["fsq_shift"])
  np.testing.assert_allclose(np.asarray(bar_fsq.fsq_bound(z)), io["fsq_bound"], **TOL)
  codes = bar_fsq.fsq_codes(z)
  np.testing.assert_array_equal(np.asarray(codes), io["fsq_codes"])
  np.testing.assert_array_equal(np.asarray(bar_fsq.codes_to_bits(codes)), io["fsq_bits"])
  weights = jnp.asarray(io["fsq_grad_weights"])
  grad = jax.grad(lambda z: jnp.sum(weights * bar_fsq.fsq_codes(z)))(z)
  np.testing.assert_allclose(np.asarray(grad), io["fsq_grad_wrt_z"], **TOL)


def test_fsq_threshold_scalars(case):
  s = case["scalars"]
  if "fsq__first_float32_with_bit1" not in s:
    pytest.skip("no threshold scalars in scalars.json")
  assert np.float32(s["fsq__shift_float32"]) == bar_fsq.SHIFT
  first_one = np.float32(s["fsq__first_float32_with_bit1"])
  last_zero = np.float32(s["fsq__last_float32_with_bit0"])
  assert np.nextafter(last_zero, np.float32(np.inf)) == first_one
  bits = bar_fsq.codes_to_bits(bar_fsq.fsq_codes(jnp.asarray([last_zero, first_one], jnp.float32)))
  np.testing.assert_array_equal(np.asarray(bits), [0, 1])


def test_fsq_forward_with_projections(case):
  io, module, params = case["io"], case["module"], case["params"]

  def forward(x):
    return module.apply({"params": params}, x, method=lambda m, x: m.quantize(x))

  out, result = forward(jnp.asarray(io["fsq_fwd_input"]))
  np.testing.assert_allclose(np.asarray(result["pre_quant"]), io["fsq_fwd_in_proj"], **TOL)
  np.testing.assert_allclose(np.asarray(out), io["fsq_fwd_output"], **TOL)
  np.testing.assert_array_equal(np.asarray(result["min_encoding_indices"]), io["fsq_fwd_bits"])
  weights = jnp.asarray(io["fsq_fwd_grad_weights"])
  grad = jax.grad(lambda x: jnp.sum(weights * forward(x)[0]))(jnp.asarray(io["fsq_fwd_input"]))
  np.testing.assert_allclose(np.asarray(grad), io["fsq_fwd_grad_wrt_input"], **TOL)


def test_pack_unpack_bits_round_trip(case):
  bits = jnp.asarray(case["io"]["bits"])
  k = bits.shape[-1]
  packed = bar_fsq.pack_bits(bits)
  assert packed.dtype == jnp.int32 and packed.shape == bits.shape[:-1]
  np.testing.assert_array_equal(np.asarray(bar_fsq.unpack_bits(packed, k)), np.asarray(bits))
  # channel j carries weight 2^j (the reference FSQ basis)
  np.testing.assert_array_equal(np.asarray(bar_fsq.pack_bits(jnp.eye(k, dtype=jnp.int32))), 2 ** np.arange(k))
  flat = bar_fsq.flatten_bits(bits)
  assert flat.shape == (bits.shape[0], bits.shape[1] * k)
  np.testing.assert_array_equal(np.asarray(flat[:, k:2 * k]), np.asarray(bits[:, 1]))
  np.testing.assert_array_equal(np.asarray(bar_fsq.unflatten_bits(flat, k)), np.asarray(bits))


# ---------------------------------------------------------------------------
# Decoder


def test_decoder_intermediates_and_image(case):
  io = case["io"]
  _check_sown(case, [k for k in io if k.startswith("inter_dec_")])
  np.testing.assert_allclose(np.asarray(case["decoded"]), _nhwc(io["decoded"]), **TOL)
  assert case["result"]["clip_pred"] is None  # clip_loss_weight 0: no projector


def test_decode_from_bits_and_indices(case):
  io, module, params = case["io"], case["module"], case["params"]
  bits = io["bits"]
  images = module.apply({"params": params}, bits.reshape(bits.shape[0], -1), method=BarTokenizer.decode_bits)
  from_indices = module.apply({"params": params}, np.asarray(bar_fsq.pack_bits(jnp.asarray(bits))),
                              method=BarTokenizer.decode_indices)
  np.testing.assert_allclose(np.asarray(images), _nhwc(io["decoded_from_bits"]), **TOL)
  np.testing.assert_array_equal(np.asarray(from_indices), np.asarray(images))


def test_decode_only_tokenizer_loads_the_same_file(case):
  module = bar_tokenizer_from_config(case["cfg"], with_encoder=False)
  abstract = nn.meta.unbox(abstract_bar_tokenizer_params(module))
  assert set(abstract) == {"decoder", "quantize"} and set(abstract["quantize"]) == {"out_proj"}
  with pytest.raises(CheckpointMismatchError, match="unexpected key 'encoder."):
    bar_tokenizer_state_to_flax(case["state"], abstract)
  params = bar_tokenizer_state_to_flax(case["state"], abstract, skip_unbuilt_parts=True)
  bits = case["io"]["bits"]
  images = module.apply({"params": params}, bits, method=BarTokenizer.decode_bits)
  np.testing.assert_allclose(np.asarray(images), _nhwc(case["io"]["decoded_from_bits"]), **TOL)
