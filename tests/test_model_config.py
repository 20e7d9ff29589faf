"""Typed model configs (models.model_config): built once from a reference-nested config, the same fields as
the string-keyed builders, frozen, and a missing key is a one-line error naming it."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import REPO
from maskbit_jax.bar_config import bar_fields
from maskbit_jax.config import load_config
from maskbit_jax.generator import generator_fields
from maskbit_jax.models.bar_generator import build_bar_module
from maskbit_jax.models.maskbit_transformer import build_generator_module
from maskbit_jax.models.bar_tokenizer import bar_tokenizer_from_config
from maskbit_jax.models.model_config import (BarGeneratorConfig, BarTokenizerConfig, MaskBitGeneratorConfig,
                                             TokenizerConfig)
from maskbit_jax.models.tokenizer import build_tokenizer_module

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__")


def _configs(section: str):
  out = []
  for name in CONFIGS:
    cfg = load_config(str(REPO / "configs" / f"{name}.py"))
    if section in cfg.get("model", {}):
      out.append((name, cfg))
  return out


MASKBIT = _configs("mlm_model")
BAR = _configs("generator")


def test_every_generator_config_is_covered():
  assert len(MASKBIT) >= 7 and len(BAR) >= 5, ([n for n, _ in MASKBIT], [n for n, _ in BAR])


@pytest.mark.parametrize("name,cfg", MASKBIT, ids=[n for n, _ in MASKBIT])
def test_maskbit_config_equals_generator_fields(name, cfg):
  config = MaskBitGeneratorConfig.from_config(cfg)
  assert config.fields() == generator_fields(cfg)
  assert build_generator_module(config) == build_generator_module(generator_fields(cfg))


@pytest.mark.parametrize("name,cfg", BAR, ids=[n for n, _ in BAR])
def test_bar_config_equals_bar_fields(name, cfg):
  config = BarGeneratorConfig.from_config(cfg)
  assert config.fields() == bar_fields(cfg)
  assert build_bar_module(config) == build_bar_module(bar_fields(cfg))


def test_configs_are_frozen_and_name_a_missing_key():
  name, cfg = MASKBIT[0]
  config = MaskBitGeneratorConfig.from_config(cfg)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.depth = 1
  del cfg.model.mlm_model["depth"]
  with pytest.raises(ValueError, match=r"model\.mlm_model\.depth is required"):
    MaskBitGeneratorConfig.from_config(cfg)
  _, bar = BAR[0]
  del bar.model.generator["hidden_size"]
  with pytest.raises(ValueError, match=r"model\.generator\.hidden_size is required"):
    BarGeneratorConfig.from_config(bar)


TOKENIZERS = [(n, c) for n, c in _configs("vq_model") if "mlm_model" not in c.model and "generator" not in c.model
              and "siglip2" not in c.model]


def test_tokenizer_configs():
  names = dict(TOKENIZERS)
  lfq = TokenizerConfig.from_config(names["maskbit_tokenizer_12bit"])
  assert (lfq.model_class, lfq.quantizer_type, lfq.token_size, lfq.codebook_size) == ("vqgan+", "lookup-free", 12, 4096)
  assert lfq.channel_mult == (1, 1, 2, 2, 4) and lfq.num_res_blocks == 2 and lfq.hidden_channels == 128
  taming = TokenizerConfig.from_config(names["taming_vqgan_tokenizer"])
  assert (taming.model_class, taming.quantizer_type) == ("taming", "lookup")
  for name, cfg in TOKENIZERS:  # a typed config builds the module its vq_model section builds
    assert build_tokenizer_module(TokenizerConfig.from_config(cfg)) == build_tokenizer_module(cfg.model.vq_model), name
  bad = names["maskbit_tokenizer_12bit"]
  bad.model.vq_model.channel_mult = [1, 2]
  with pytest.raises(ValueError, match="channel_mult"):
    TokenizerConfig.from_config(bad)


def test_bar_tokenizer_configs():
  fsq = [(n, c) for n, c in _configs("vq_model") if n.startswith("bar_fsq")]
  assert len(fsq) >= 3
  for name, cfg in fsq:
    config = BarTokenizerConfig.from_config(cfg)
    assert config.token_size == int(cfg.model.vq_model.token_size), name
    for with_encoder in (True, False):
      assert (bar_tokenizer_from_config(config, with_encoder=with_encoder)
              == bar_tokenizer_from_config(cfg, with_encoder=with_encoder)), name
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.token_size = 1
  del cfg.dataset.preprocessing["crop_size"]
  with pytest.raises(KeyError, match="dataset.preprocessing.crop_size"):
    BarTokenizerConfig.from_config(cfg)
