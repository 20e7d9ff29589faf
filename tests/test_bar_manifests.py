"""Every released BAR generator, at full size, maps one-to-one onto its manifest (nothing allocated).

The manifests (``<MASKBIT_GOLDEN_BAR>/manifests/*.json``) were built from the
release yamls on PyTorch's ``meta`` device; ours come from ``configs/<name>.py``
through ``jax.eval_shape``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import linen as nn

from conftest import REPO, golden_bar_path
from maskbit_jax.bar_config import bar_fields, bar_sampling_defaults
from maskbit_jax.config import load_config
from maskbit_jax.convert.bar_mapping import bar_key_order, expected_bar_shapes
from maskbit_jax.models.bar_generator import abstract_bar_params, build_bar_module
from maskbit_jax.models.bar_mbm_head import swiglu_hidden


def _generator_manifests():
  folder = golden_bar_path() / "manifests"
  names = sorted(p.stem for p in folder.glob("*.json")
                 if "generator" in json.loads(p.read_text()).get("config", {})) if folder.is_dir() else []
  return names or ["<no fixtures>"]


@pytest.fixture(scope="module", params=_generator_manifests())
def case(request):
  folder = golden_bar_path() / "manifests"
  if request.param == "<no fixtures>":
    message = f"BAR manifests not found in {folder} (set MASKBIT_GOLDEN_BAR)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  name = request.param
  manifest = json.loads((folder / f"{name}.json").read_text())
  cfg = load_config(REPO / "configs" / f"{name}.py")
  module = build_bar_module(bar_fields(cfg))
  abstract = nn.meta.unbox(abstract_bar_params(module))
  return name, manifest, cfg, module, abstract


def test_config_equals_released_yaml(case):
  name, manifest, cfg, _, _ = case
  model = cfg.model.to_dict()
  assert model.pop("name") == "bar_generator"  # the port's family key (model.name); the yaml has none
  assert model == manifest["config"], f"configs/{name}.py model section differs from the yaml"
  for section in ("training", "optimizer", "lr_scheduler"):
    assert cfg[section].to_dict() == manifest[section], f"configs/{name}.py {section} differs from the yaml"


def test_sampling_defaults_are_the_released_evaluation_settings(case):
  _, manifest, cfg, _, _ = case
  released = manifest["released_sampling_settings (README)"]
  defaults = bar_sampling_defaults(cfg)
  assert defaults["guidance_scale"] == released["guidance_scale"]
  assert defaults["randomize_temperature"] == released["randomize_temperature"]
  assert list(defaults["tokens_allocation"]) == released["tokens_allocation"]
  assert cfg.sampling.tokenizer == released["tokenizer"]
  assert sum(defaults["tokens_allocation"]) == manifest["derived"]["bits_per_ar_step (vq_split_channel, MBM seq_len)"]


def test_derived_sizes(case):
  _, manifest, _, module, _ = case
  d = manifest["derived"]
  assert module.patch_size == d["patch_size"] and list(module.grid) == d["latent_grid"]
  assert module.num_steps == d["ar_steps (image_seq_len after patching)"]
  assert module.token_bits == d["bits_per_token (vq token_size)"]
  assert module.step_bits == d["bits_per_ar_step (vq_split_channel, MBM seq_len)"]
  assert module.prefix_len == d["prefix_len (1 + repeat)"]
  assert module.prefix_len + module.num_steps == d["sequence_len_train (prefix + steps)"]
  assert module.head_dim == d["head_dim"]
  assert swiglu_hidden(module.hidden_size) == d["swiglu_hidden backbone int(2/3*int(4D))"]
  assert swiglu_hidden(module.head_width) == d["mbm_swiglu_hidden"]
  assert (module.head_width, module.head_layers) == (d["mbm_width"], d["mbm_layers"])
  assert module.bit_embed_dim == d["backbone_per_bit_embed_dim ceil(D/k)"]
  assert module.none_condition_id == d["none_condition_id"]
  assert module.class_offset == d["class_id_offset (target_codebook_size+1)"]
  assert module.dropout == d["dropout"]


def test_params_map_one_to_one(case):
  _, manifest, _, module, abstract = case
  ours = expected_bar_shapes(module, abstract)
  theirs = {k: tuple(v) for k, v in {**manifest["params"], **manifest["buffers_in_state_dict"]}.items()}
  assert set(ours) - set(theirs) == set(), "keys only in the JAX model"
  assert set(theirs) - set(ours) == set(), "keys only in the released checkpoint"
  mismatched = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
  assert not mismatched
  assert [k for k in bar_key_order(module) if k in manifest["params"]] == list(manifest["params"])
  counts = {k: int(np.prod(s)) for k, s in ours.items() if k in manifest["params"]}
  assert sum(counts.values()) == manifest["num_params"] == manifest["derived"]["num_params_total"]
  assert sum(v for k, v in counts.items() if k.startswith("lm_head.")) == manifest["derived"]["num_params_mbm_head"]
