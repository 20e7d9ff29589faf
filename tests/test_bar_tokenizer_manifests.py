"""Every released BAR tokenizer (``manifests/bar_fsq_*.json``) maps one-to-one onto ``BarTokenizer`` at full size.

Nothing is allocated (``jax.eval_shape``). Checked per manifest: every state-dict key (aliases included) in
the reference's order with its shape, the parameter count, the decode-only subset, and that
``configs/<name>.py`` reproduces the released yaml sections and the hard-coded sizes stated in ``derived``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import pytest
from flax import linen as nn

from maskbit_jax.config import load_config
from maskbit_jax.convert.bar_tokenizer_mapping import expected_bar_tokenizer_shapes, flax_param_count
from maskbit_jax.models.bar_tokenizer import abstract_bar_tokenizer_params, bar_tokenizer_from_config
from conftest import golden_bar_path

REPO = pathlib.Path(__file__).resolve().parents[1]


def _is_tokenizer_manifest(manifest: dict) -> bool:
  return "vq_model" in manifest.get("config", {}) and "generator" not in manifest["config"]


def _manifest_names() -> list[str]:
  folder = golden_bar_path() / "manifests"
  if not folder.is_dir():
    return ["<no fixtures>"]
  names = sorted(p.stem for p in folder.glob("*.json") if _is_tokenizer_manifest(json.loads(p.read_text())))
  return names or ["<no fixtures>"]


@pytest.fixture(scope="module", params=_manifest_names())
def manifest(request):
  path = golden_bar_path() / "manifests" / f"{request.param}.json"
  if not path.is_file():
    message = f"BAR golden manifests not found at {path.parent} (set MASKBIT_GOLDEN_BAR)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  data = json.loads(path.read_text())
  data["name"] = request.param
  return data


def _config(manifest):
  path = REPO / "configs" / f"{manifest['name']}.py"
  if not path.is_file():
    pytest.fail(f"no config file configs/{manifest['name']}.py for the released tokenizer {manifest['name']}")
  return load_config(path)


def test_full_size_tokenizer_matches_manifest(manifest):
  module = bar_tokenizer_from_config(_config(manifest))
  abstract = nn.meta.unbox(abstract_bar_tokenizer_params(module))
  ours = expected_bar_tokenizer_shapes(abstract, module)
  order = manifest["state_dict_keys_in_order"]
  assert set(ours) - set(order) == set(), "keys only in the JAX model"
  assert set(order) - set(ours) == set(), "keys only in the released state dict"
  assert list(ours) == order
  shapes = {**manifest["params"], **manifest["buffers_in_state_dict"]}
  aliases = manifest.get("state_dict_aliases (same tensor as another key)", [])
  for key in order:
    if key in shapes:
      assert ours[key] == tuple(shapes[key]), key
    else:
      assert key in aliases, f"{key} is neither a parameter nor an alias"
  assert flax_param_count(abstract) == manifest["num_params"]


def test_decode_only_subset(manifest):
  cfg = _config(manifest)
  cfg.losses.clip_loss_weight = 0.0  # as in a generator config: no clip_projector
  module = bar_tokenizer_from_config(cfg, with_encoder=False)
  abstract = nn.meta.unbox(abstract_bar_tokenizer_params(module))
  ours = expected_bar_tokenizer_shapes(abstract, module)
  for key, shape in ours.items():
    assert tuple(manifest["params"][key]) == shape, key
  derived = manifest["derived"]
  count_key = [k for k in derived if k.startswith("num_params_decode_path")]
  if count_key:
    assert flax_param_count(abstract) == derived[count_key[0]]


def test_our_config_equals_released_config(manifest):
  cfg = _config(manifest)
  assert cfg.model.vq_model.to_dict() == manifest["config"]["vq_model"]
  if "discriminator" in manifest["config"]:
    assert cfg.model.discriminator.to_dict() == manifest["config"]["discriminator"]
  assert cfg.dataset.preprocessing.to_dict() == manifest["dataset_preprocessing"]
  assert cfg.losses.to_dict() == manifest["losses"]


def test_hard_coded_sizes_match_derived(manifest):
  cfg = _config(manifest)
  derived = manifest["derived"]
  width_key = [k for k in derived if k.startswith("decoder_width/layers/heads")]
  assert width_key
  dec = cfg.model.vit_decoder
  assert [dec.width, dec.num_layers, dec.num_heads] == derived[width_key[0]]
  match = re.search(r"(\{.*\})", derived["encoder"])
  assert match, derived["encoder"]
  stated = json.loads(match.group(1))
  for key, value in stated.items():
    assert cfg.model.siglip2[key] == value, key
  module = bar_tokenizer_from_config(cfg)
  assert module.grid_size == derived["decoder_grid"] == derived["encoder_grid"]
  assert module.codebook_size == np.int64(2) ** cfg.model.vq_model.token_size
