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
