"""BAR sampling parity: replaying the stored uniforms of ``sampling.npz`` reproduces every trace.

Bits, masks and tokens must match exactly; logits, confidences, conditions and
images within rtol = atol = 1e-4 (README section 9). Traces, their generators and
settings all come from ``fixture_configs.json`` (``sampling_<t>``); the images
are the fixture tokenizer's ``decode_tokens`` of the final bits.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import jax
import jax.extend.core
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from conftest import golden_bar_path, load_npz
from maskbit_jax import bar
from maskbit_jax.bar_config import bar_fields
from maskbit_jax.convert.bar_mapping import bar_state_to_flax
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.models.bar_generator import BarGenerator, abstract_bar_params, build_bar_module
from maskbit_jax.sampling.bar_sampler import generate

TOL = dict(rtol=1e-4, atol=1e-4)
# Trace arrays that are inputs, or need the tokenizer (images): not produced by the sampler.
NOT_SAMPLER_OUTPUTS = ("labels", "torch_seed", "image", "image_u8", "full_forward_z")


def _configs() -> dict:
  path = golden_bar_path() / "fixture_configs.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def _trace_names():
  return [v["name"] for k, v in _configs().items() if k.startswith("sampling_")] or ["<no fixtures>"]


@pytest.fixture(scope="session")
def golden_bar() -> pathlib.Path:
  path = golden_bar_path()
  if not (path / "sampling.npz").is_file():
    message = f"BAR golden fixtures not found at {path} (set MASKBIT_GOLDEN_BAR)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return path


@functools.lru_cache(maxsize=None)
def _generator(golden: pathlib.Path, name: str):
  cfg = ml_collections.ConfigDict(_configs()[name])
  module = build_bar_module(bar_fields(cfg))
  abstract = nn.meta.unbox(abstract_bar_params(module))
  params = bar_state_to_flax(read_state_dict(golden / f"{name}.bin"), abstract, module, source=f"{name}.bin")
  return module, jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def traces(golden_bar):
  return load_npz(golden_bar / "sampling.npz")


@pytest.fixture(scope="module", params=_trace_names())
def replay(request, golden_bar, traces):
  if request.param == "<no fixtures>":
    pytest.skip("no sampling traces")
  t = request.param
  settings = _configs()[f"sampling_{t}"]
  module, params = _generator(golden_bar, settings["generator"])
  stored = {k[len(f"trace{t}_"):]: v for k, v in traces.items() if k.startswith(f"trace{t}_")}
  with jax.default_matmul_precision("highest"):
    bits, trace = generate(module, params, stored["labels"], guidance_scale=settings["guidance_scale"],
                           randomize_temperature=settings["randomize_temperature"],
                           tokens_allocation=settings["tokens_allocation"],
                           noise=dict(u_sample=stored["u_sample"], u_conf=stored["u_conf"]), return_trace=True)
  return settings, module, params, stored, np.asarray(bits), jax.tree.map(np.asarray, trace)


def test_trace_replay(replay):
  settings, module, _, stored, bits, trace = replay
  assert settings["kv_cache"] and not settings["sample_with_random_order"]
  guided = settings["guidance_scale"] > 1.0
  assert ("logits_cond" in stored) == guided and ("logits" in stored) == (not guided)
  keys = [k for k in stored if k not in NOT_SAMPLER_OUTPUTS]
  assert "final_tokens" in keys and "remask" in keys
  for key in keys:
    assert key in trace, f"the sampler's trace has no {key!r}"
    ours, theirs = trace[key], stored[key]
    assert ours.shape == theirs.shape, f"{key}: {ours.shape} != {theirs.shape}"
    if theirs.dtype.kind in "biu":
      np.testing.assert_array_equal(ours, theirs, err_msg=key)
    else:
      np.testing.assert_allclose(ours, theirs, err_msg=key, **TOL)
  np.testing.assert_array_equal(bits, stored["final_tokens"])
  assert bits.shape == (len(settings["labels"]), module.image_seq_len * module.token_bits)


def test_cached_conditions_equal_full_forward_on_the_final_sequence(replay):
  settings, module, params, stored, _, trace = replay
  batch, steps, k = len(settings["labels"]), module.num_steps, module.step_bits
  ids = jnp.asarray(stored["ids_ar_order"]).reshape(batch, steps, k)
  cond = module.condition_ids(jnp.asarray(stored["labels"]))
  if settings["guidance_scale"] > 1.0:
    ids, cond = jnp.concatenate([ids, ids]), jnp.concatenate([cond, jnp.full_like(cond, module.none_condition_id)])
  with jax.default_matmul_precision("highest"):
    full = jax.jit(lambda p, i, c: module.apply({"params": p}, i, c, method=BarGenerator.latent_conditions))(
        params, ids, cond)
  np.testing.assert_allclose(np.asarray(full), stored["full_forward_z"], **TOL)
  # the KV-cached conditions the sampler fed the head are the full forward's first L positions
  np.testing.assert_allclose(trace["head_conditions"], np.moveaxis(np.asarray(full[:, :steps]), 1, 0),
                             rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _tokenizer(golden: pathlib.Path, token_bits: int):
  """The fixture's BAR-FSQ tokenizer of ``token_bits`` bits, decode-only, through the public loader."""
  configs = _configs()
  names = [k for k, v in configs.items() if k.startswith("tokenizer") and isinstance(v, dict) and "model" in v
           and int(v["model"]["vq_model"]["token_size"]) == token_bits and (golden / f"{k}.bin").is_file()]
  if not names:
    pytest.skip(f"no {token_bits}-bit tokenizer fixture to decode the traces with")
  cfg = json.loads(json.dumps(configs[names[0]]))
  cfg["model"]["siglip2"] = configs[f"{names[0]}_siglip2_vision_config"]
  cfg["model"]["vit_decoder"] = configs[f"{names[0]}_decoder_overrides"]
  return bar.load_bar_tokenizer(cfg, golden / f"{names[0]}.bin")


def test_trace_images_through_the_public_sampler(replay, golden_bar):
  """``maskbit_jax.bar.sample`` replaying the noise gives the trace's bits and, decoded by the BAR tokenizer,
  its ``image`` (the decoder's [-1, 1], here mapped to [0, 1]) and ``image_u8`` (the sample script's PNG values)."""
  settings, module, params, stored, _, _ = replay
  if "image" not in stored:
    pytest.skip("this fixture set stores no trace images")
  tok = _tokenizer(golden_bar, module.token_bits)
  gen = bar.BarModel(ml_collections.ConfigDict(_configs()[settings["generator"]]), module, params)
  with jax.default_matmul_precision("highest"):
    out = bar.sample(gen, tok, np.asarray(stored["labels"]), None, guidance_scale=settings["guidance_scale"],
                     randomize_temperature=settings["randomize_temperature"],
                     tokens_allocation=settings["tokens_allocation"],
                     noise=dict(u_sample=stored["u_sample"], u_conf=stored["u_conf"]))
  np.testing.assert_array_equal(np.asarray(out["bits"]), stored["final_tokens"])
  theirs = np.transpose(stored["image"], (0, 2, 3, 1))
  ours = np.asarray(out["images"])
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(2.0 * ours - 1.0, theirs, **TOL)
  # the conversion itself is the reference's, value for value
  np.testing.assert_array_equal(bar.images_to_uint8((theirs + 1.0) / 2.0), stored["image_u8"])
  # ours may flip a truncation where a value sits within float error of an integer boundary
  diff = np.abs(bar.images_to_uint8(ours).astype(np.int32) - stored["image_u8"].astype(np.int32))
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, f"{np.count_nonzero(diff)} uint8 values differ"


def _random_params(abstract, seed: int):
  rng = np.random.default_rng(seed)

  def one(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(np.float32)
    scale = {"scale": None, "bias": 0.1, "kernel": 1 / np.sqrt(leaf.shape[0])}.get(path[-1].key, 0.5)
    return jnp.asarray(1 + 0.2 * n if scale is None else scale * n)

  return jax.tree_util.tree_map_with_path(one, abstract)


def _scan_lengths(jaxpr) -> list[int]:
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      out.append(int(eqn.params["length"]))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out += _scan_lengths(sub)
  return out


def test_random_draws_one_compiled_scan():
  """Fresh draws from a key (a tiny random model: no fixture needed); the AR loop is one lax.scan."""
  module = BarGenerator(hidden_size=32, depth=1, num_heads=4, image_seq_len=36, token_bits=2, patch_size=1,
                        num_classes=5, repeat_class_condition=2, head_width=16, head_layers=1)
  params = _random_params(nn.meta.unbox(abstract_bar_params(module)), seed=0)
  labels = np.asarray([0, 4, 2])
  kw = dict(guidance_scale=3.0, randomize_temperature=1.5, tokens_allocation=(1, 1))
  a = np.asarray(generate(module, params, labels, jax.random.key(0), **kw))
  b = np.asarray(generate(module, params, labels, jax.random.key(0), **kw))
  c = np.asarray(generate(module, params, labels, jax.random.key(1), **kw))
  assert a.shape == (len(labels), module.image_seq_len * module.token_bits)
  assert set(np.unique(a)) <= {0, 1}
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # AR steps: one scan of L-1 steps (+ the last step's head after it); the head's inner loop: a scan of S steps;
  # the blocks: one scan over depth in the prefill, one in the cached step
  jaxpr = jax.make_jaxpr(lambda p, k: generate(module, p, labels, k, **kw))(params, jax.random.key(0))
  lengths = sorted(_scan_lengths(jaxpr.jaxpr))
  assert lengths == sorted([module.num_steps - 1, 2, 2, module.depth, module.depth])


def test_known_bits_are_teacher_forced():
  """Editing: known bits come out as given, rows keep different sets; nothing known is the plain sampler."""
  module = BarGenerator(hidden_size=32, depth=1, num_heads=4, image_seq_len=36, token_bits=2, patch_size=1,
                        num_classes=5, repeat_class_condition=2, head_width=16, head_layers=1)
  params = _random_params(nn.meta.unbox(abstract_bar_params(module)), seed=0)
  labels, key = np.asarray([0, 4, 2]), jax.random.key(3)
  kw = dict(guidance_scale=3.0, randomize_temperature=1.5, tokens_allocation=(1, 1))
  n = module.image_seq_len * module.token_bits
  values = np.random.default_rng(0).integers(0, 2, (3, n)).astype(np.int32)
  mask = np.zeros((3, n), bool)
  mask[0, : n // 2] = True  # a raster prefix
  mask[1, 1::2] = True      # the high bit of every token
  out = np.asarray(generate(module, params, labels, key, known_bits=values, known_mask=mask, **kw))
  np.testing.assert_array_equal(out[mask], values[mask])
  assert (out[~mask] != values[~mask]).any()
  plain = np.asarray(generate(module, params, labels, key, **kw))
  none_known = generate(module, params, labels, key, known_bits=values, known_mask=np.zeros_like(mask), **kw)
  np.testing.assert_array_equal(np.asarray(none_known), plain)
  with pytest.raises(ValueError, match="both or neither"):
    generate(module, params, labels, key, known_bits=values, **kw)
  with pytest.raises(ValueError, match="known_mask must have shape"):
    generate(module, params, labels, key, known_bits=values, known_mask=mask[:, :-1], **kw)


def test_invalid_settings_are_rejected(golden_bar):
  settings = next(v for k, v in _configs().items() if k.startswith("sampling_"))
  module, params = _generator(golden_bar, settings["generator"])
  k = module.step_bits
  labels = np.asarray(settings["labels"])
  kw = dict(guidance_scale=2.0, randomize_temperature=1.0)
  with pytest.raises(ValueError, match="sum"):
    generate(module, params, labels, jax.random.key(0), tokens_allocation=[k + 1], **kw)
  if k >= 3:
    with pytest.raises(ValueError, match="non-decreasing"):
      generate(module, params, labels, jax.random.key(0), tokens_allocation=[k - 1, 1], **kw)
  with pytest.raises(ValueError, match="labels"):
    generate(module, params, np.asarray([module.num_classes]), jax.random.key(0), tokens_allocation=[k], **kw)
  with pytest.raises(ValueError, match="u_sample"):
    generate(module, params, labels, tokens_allocation=[k], noise=dict(u_sample=np.zeros((1,)), u_conf=np.zeros((1,))),
             **kw)
