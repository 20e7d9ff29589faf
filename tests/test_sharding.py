"""Tokenizer params and batches placed by the one rules table on 8 simulated CPU devices."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

import maskbit_jax
from conftest import load_npz, nhwc, tokenizer_config
from maskbit_jax import sharding
from maskbit_jax.generator import Generator, sharded_forward
from maskbit_jax.models.tokenizer import abstract_tokenizer_params

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_eight_simulated_devices():
  assert jax.device_count() == 8, "conftest sets --xla_force_host_platform_device_count=8"


def test_mesh_shapes():
  mesh = sharding.create_mesh({"data": 2, "fsdp": -1})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="do not divide"):
    sharding.create_mesh({"data": 3, "fsdp": -1})
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.create_mesh({"model": 2})


def test_meshes_keep_the_device_order_on_cpu_and_validate_sizes():
  # CPU devices have no torus: mesh_utils keeps jax.devices()' order, so every mesh config places (and
  # computes) exactly as the plain reshape did before
  for shape in ({"data": -1}, {"data": 2, "fsdp": 4}, {"fsdp": 2, "tensor": 4}, {"data": 2, "fsdp": 2, "tensor": 2}):
    mesh = sharding.create_mesh(shape)
    assert mesh.axis_names == sharding.MESH_AXES
    np.testing.assert_array_equal(np.vectorize(lambda d: d.id)(mesh.devices).ravel(), [d.id for d in jax.devices()])
  assert dict(sharding.create_mesh({"data": 2}, jax.devices()[:2]).shape) == {"data": 2, "fsdp": 1, "tensor": 1}
  for shape, message in (({"data": 0}, "must be >= 1"), ({"data": -1, "fsdp": -1}, "at most one mesh axis"),
                         ({"data": 4}, "needs 4 devices, have 8")):
    with pytest.raises(ValueError, match=message):
      sharding.create_mesh(shape)


def test_dcn_mesh_needs_as_many_slices_or_processes_as_it_spans():
  attr, groups = sharding.granules(jax.devices())
  assert attr == "process_index" and len(groups) == 1  # one process, no slices on CPU
  assert dict(sharding.create_mesh({"data": -1}, dcn_shape={"data": 1, "fsdp": 1}).shape)["data"] == 8
  with pytest.raises(ValueError, match=r"DCN mesh \{'data': 2, 'fsdp': 1, 'tensor': 1\} spans 2 processes, the "
                                       r"devices are in 1 processes"):
    sharding.create_mesh({"fsdp": -1}, dcn_shape={"data": 2})
  with pytest.raises(ValueError, match="not -1"):
    sharding.create_mesh({"fsdp": -1}, dcn_shape={"data": -1})
  with pytest.raises(ValueError, match="unknown DCN mesh axes"):
    sharding.create_mesh(dcn_shape={"slice": 2})


def test_runtime_dcn_mesh_from_the_config(fixture_configs):
  from maskbit_jax.train.loop import make_mesh

  cfg = maskbit_jax.load_config(str(REPO / "configs/tokenizer_tiny.py"), ["--config.runtime.mesh.fsdp=2"])
  assert dict(cfg.runtime.dcn_mesh) == {"data": 1, "fsdp": 1, "tensor": 1}
  assert dict(make_mesh(cfg).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  cfg = maskbit_jax.load_config(str(REPO / "configs/tokenizer_tiny.py"), ["--config.runtime.dcn_mesh.data=2"])
  with pytest.raises(ValueError, match="runtime.dcn_mesh .* spans 2 processes"):
    make_mesh(cfg)


def test_every_param_has_logical_axes(fixture_configs):
  module = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), random_init=True).module
  boxed = abstract_tokenizer_params(module)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  names = {n for x in leaves for n in x.names}
  rule_names = {name for name, _ in sharding.RULES}
  assert names <= rule_names, f"logical axes without a rule: {names - rule_names}"


def test_sharded_encode_equals_single_device(golden, fixture_configs):
  cfg = tokenizer_config(fixture_configs, "tokenizer_tiny")
  tok = maskbit_jax.load_tokenizer(cfg, golden / "tokenizer_tiny.bin")
  images = np.concatenate([nhwc(load_npz(golden / "tokenizer_tiny_io.npz")["images"])] * 4)  # 8 images
  expected = np.asarray(tok.encode(images))

  mesh = sharding.create_mesh({"data": 2, "fsdp": 4})
  param_sh = sharding.logical_to_sharding(abstract_tokenizer_params(tok.module), mesh)
  params = jax.device_put(tok.params, param_sh)
  conv_in = params["encoder"]["conv_in"]["kernel"]
  assert conv_in.sharding.spec == P(None, None, None, "fsdp")  # conv_out axis split 4 ways
  assert len(conv_in.addressable_shards) == 8
  batch_sh = sharding.batch_sharding(mesh, 4)
  assert batch_sh.spec == P(("data", "fsdp"), None, None, None)

  encode = jax.jit(lambda p, x: tok.module.apply({"params": p}, x, method="encode")[1]["min_encoding_indices"],
                   in_shardings=(param_sh, batch_sh), out_shardings=sharding.batch_sharding(mesh, 3))
  tokens = encode(params, jax.device_put(jnp.asarray(images), batch_sh))
  assert tokens.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_array_equal(np.asarray(tokens), expected)


def test_generator_sharded_forward_equals_single_device(golden, fixture_configs):
  from maskbit_jax.convert.generator_mapping import generator_param_mapping
  from maskbit_jax.convert.param_mapping import torch_state_to_flax
  from maskbit_jax.models.maskbit_transformer import abstract_generator_params, build_generator_module

  module = build_generator_module(fixture_configs["configs"]["generator_tiny"])
  boxed = abstract_generator_params(module)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  names = {n for x in leaves for n in x.names if n is not None}
  assert names <= {name for name, _ in sharding.RULES}, names - {name for name, _ in sharding.RULES}
  params = torch_state_to_flax(load_npz(golden / "generator_tiny_state.npz"), nn.meta.unbox(boxed),
                               generator_param_mapping(module.bits_per_split))
  io = load_npz(golden / "generator_tiny_io.npz")
  mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  placed = jax.device_put(params, sharding.logical_to_sharding(boxed, mesh))
  assert placed["transformer_layers"]["ffn"]["net_0"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
  gen = Generator(maskbit_jax.load_config({"model": {"mlm_model": {}}}), module, params)
  ways = sharding.data_parallel_size(mesh)
  # the fixture batch (whatever its size), one the batch axes divide and one they do not
  rows = np.resize(np.arange(len(io["labels"])), ways * -(-len(io["labels"]) // ways))
  batches = {"fixture": np.arange(len(io["labels"])), "divisible": rows, "indivisible": rows[:-1]}
  forward, strict = sharded_forward(gen, mesh), sharded_forward(gen, mesh, pad=False)
  for name, idx in batches.items():
    tokens, labels = io["masked_tokens"][idx], io["labels"][idx]
    expected = np.asarray(module.apply({"params": params}, tokens, labels))
    logits = forward(tokens, labels)  # padded to the batch axes where they do not divide it
    assert logits.shape == expected.shape, name
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5, err_msg=name)
    if len(idx) % ways:
      with pytest.raises(sharding.BatchNotDivisibleError, match=f"a batch of {len(idx)} does not split over "
                                                                f"the mesh's {ways} batch shards"):
        strict(tokens, labels)
    else:
      np.testing.assert_allclose(np.asarray(strict(tokens, labels)), expected, rtol=1e-5, atol=1e-5, err_msg=name)
