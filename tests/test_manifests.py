"""Every released tokenizer, at full size, maps one-to-one onto its manifest (nothing allocated)."""

from __future__ import annotations

import json

import pytest
from flax import linen as nn

from conftest import REPO, golden_path
from maskbit_jax.config import load_config
from maskbit_jax.convert.param_mapping import expected_torch_shapes
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
from maskbit_jax.models.tokenizer import abstract_tokenizer_params, build_tokenizer_module, codebook_size_of


def _manifests(kind):
  folder = golden_path() / "manifests"
  if not folder.is_dir():
    return ["<no fixtures>"]
  return sorted(p.stem for p in folder.glob("*.json") if json.loads(p.read_text())["kind"] == kind)


def _load(golden, name):
  return json.loads((golden / "manifests" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", _manifests("tokenizer"))
def test_full_size_tokenizer_matches_manifest(golden, name):
  manifest = _load(golden, name)
  vq = dict(manifest["config"]["vq_model"])
  vq["codebook_size"] = manifest["derived"]["codebook_size_used"]
  module = build_tokenizer_module(vq)
  abstract = nn.meta.unbox(abstract_tokenizer_params(module))
  ours = expected_torch_shapes(tokenizer_param_mapping(vq), abstract)
  theirs = {k: tuple(v) for k, v in {**manifest["params"], **manifest["buffers"]}.items()}
  assert set(ours) - set(theirs) == set(), "keys only in the JAX model"
  assert set(theirs) - set(ours) == set(), "keys only in the released checkpoint"
  mismatched = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
  assert not mismatched
  num_params = sum(int(__import__("numpy").prod(s)) for k, s in ours.items() if k in manifest["params"])
  assert num_params == manifest["num_params"]


@pytest.mark.parametrize("name", _manifests("tokenizer"))
def test_our_config_equals_released_config(golden, name):
  manifest = _load(golden, name)
  cfg = load_config(REPO / "configs" / f"{name}.py")
  ours = cfg.model.vq_model.to_dict()
  theirs = manifest["config"]["vq_model"]
  for key, value in theirs.items():
    assert key in ours, f"{name}: configs/{name}.py lacks model.vq_model.{key}"
    assert ours[key] == value, f"{name}: model.vq_model.{key} is {ours[key]!r}, released {value!r}"
  assert codebook_size_of(ours) == manifest["derived"]["codebook_size_used"]
  if "discriminator" in manifest["config"]:
    assert cfg.model.discriminator.to_dict() == manifest["config"]["discriminator"]


@pytest.mark.parametrize("name", _manifests("generator"))
def test_full_size_generator_matches_manifest(golden, name):
  import numpy as np

  from maskbit_jax.convert.generator_mapping import generator_param_mapping
  from maskbit_jax.generator import generator_fields
  from maskbit_jax.models.maskbit_transformer import abstract_generator_params, build_generator_module

  manifest = _load(golden, name)
  derived = manifest["derived"]
  cfg = load_config(REPO / "configs" / f"{name}.py")
  fields = generator_fields(cfg)
  for key in ("img_size", "hidden_dim", "codebook_splits", "depth", "heads", "mlp_dim", "use_prenorm",
              "input_stride", "nclass"):
    assert fields[key] == derived[key], f"{name}: {key} is {fields[key]}, released {derived[key]}"
  assert 2 ** fields["token_size"] == derived["codebook_size"]
  module = build_generator_module(fields)
  assert module.seq_len == derived["seq_len"] and module.mask_token == derived["mask_token"]
  assert module.null_label == derived["null_class_label"]
  mapping = generator_param_mapping(module.bits_per_split)
  ours = expected_torch_shapes(mapping, nn.meta.unbox(abstract_generator_params(module)))
  theirs = {k: tuple(v) for k, v in {**manifest["params"], **manifest["buffers"]}.items()}
  assert set(ours) == set(theirs), (set(ours) ^ set(theirs))
  assert {k: v for k, v in ours.items() if v != theirs[k]} == {}
  assert sum(int(np.prod(s)) for k, s in ours.items() if k in manifest["params"]) == manifest["num_params"]
  # the released file names the bit projection token_emb.*: the rename maps exactly those keys
  released = {v: k for k, v in manifest["released_key_to_model_key"].items()}
  assert {released[k] for k in ours} == set(manifest["released_key_to_model_key"])


@pytest.mark.parametrize("name", _manifests("generator"))
def test_our_generator_config_equals_released_config(golden, name):
  manifest = _load(golden, name)
  cfg = load_config(REPO / "configs" / f"{name}.py")
  for section in ("vq_model", "mlm_model"):
    ours = cfg.model[section].to_dict()
    for key, value in manifest["config"][section].items():
      assert key in ours, f"{name}: configs/{name}.py lacks model.{section}.{key}"
      assert ours[key] == value, f"{name}: model.{section}.{key} is {ours[key]!r}, released {value!r}"
