"""Model families by name: the registry, the protocols, and ``model.name`` in configs (inferred once for
reference yamls and older stored configs)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maskbit_jax
from maskbit_jax import protocols, registry
from maskbit_jax.config import infer_model_name, load_config, packaged_config_names

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a toy family, through the public API alone

@dataclasses.dataclass(frozen=True)
class ToyTokenizer:
  """Tokens of ``token_bits`` bits on a fixed 2x2 grid; a token decodes to a flat 4x4 patch of its value."""

  family = "toy_tokenizer"
  token_bits: int = 3
  params: dict = dataclasses.field(default_factory=dict)
  latent_stride = 4
  image_size = 8

  def token_grid(self, image_size=None):
    return 2, 2

  def encode(self, images):
    mean = jnp.asarray(images).reshape(-1, 2, 4, 2, 4, 3).mean(axis=(2, 4, 5))
    return jnp.round(mean * (2 ** self.token_bits - 1)).astype(jnp.int32)

  def encode_bits(self, images):
    return (self.encode(images)[..., None] >> jnp.arange(self.token_bits)) & 1

  def decode_tokens(self, tokens):
    value = jnp.asarray(tokens, jnp.float32) / (2 ** self.token_bits - 1)
    return jnp.repeat(jnp.repeat(value, 4, axis=1), 4, axis=2)[..., None].repeat(3, axis=-1)

  def bits_to_images(self, bits):
    return self.decode_tokens(jnp.sum(jnp.asarray(bits) << jnp.arange(self.token_bits), axis=-1))


@dataclasses.dataclass(frozen=True)
class ToyGenerator:
  """Every token of class ``c`` is ``c``, plus ``offset`` (its one sampling setting)."""

  family = "toy_generator"
  token_bits: int = 3
  num_classes: int = 4
  config: dict = dataclasses.field(default_factory=dict)
  params: dict = dataclasses.field(default_factory=dict)

  @property
  def sampling_defaults(self):
    return dict(offset=0)

  def check_labels(self, labels):
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= self.num_classes:
      raise ValueError(f"class labels must be in [0, {self.num_classes})")
    return labels


def _toy_check_pair(gen, tok):
  if gen.token_bits != tok.token_bits:
    raise ValueError(f"toy generator makes {gen.token_bits}-bit tokens, the tokenizer has {tok.token_bits}")


def _toy_settings(gen, overrides):
  return dict(gen.sampling_defaults, **{k: v for k, v in overrides.items() if v is not None})


def _toy_sampler(gen, tok, labels, key, **settings):
  labels = gen.check_labels(labels)
  offset = _toy_settings(gen, settings)["offset"]
  tokens = jnp.broadcast_to(jnp.asarray(labels, jnp.int32)[:, None, None] + offset, (len(labels), 2, 2))
  return dict(tokens=tokens, images=tok.decode_tokens(tokens))


@pytest.fixture
def toy_family():
  registry.register(registry.Family(name="toy_tokenizer", role="tokenizer", bits="lfq",
                                    loader=lambda cfg, checkpoint=None, **_: ToyTokenizer()))
  registry.register(registry.Family(name="toy_generator", role="generator", sampler=_toy_sampler,
                                    check_pair=_toy_check_pair, resolve_settings=_toy_settings,
                                    sampling_keys=("offset",), tokenizer_of=lambda cfg: "toy_tokenizer",
                                    loader=lambda cfg, checkpoint=None, **_: ToyGenerator()))
  yield
  registry.unregister("toy_generator")
  registry.unregister("toy_tokenizer")


def test_a_family_registered_through_the_public_registry_samples_through_maskbit_jax_sample(toy_family):
  gen, tok = ToyGenerator(), ToyTokenizer()
  assert isinstance(gen, protocols.Generator) and isinstance(tok, protocols.Tokenizer)
  out = maskbit_jax.sample(gen, tok, [1, 3], jax.random.key(0), offset=2)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), np.array([3, 5])[:, None, None] * np.ones((1, 2, 2)))
  assert out["images"].shape == (2, 8, 8, 3)
  np.testing.assert_allclose(np.asarray(out["images"])[0], 3 / 7)
  # the pair is checked by the family's own check, before its sampler runs
  with pytest.raises(ValueError, match="toy generator makes 3-bit tokens"):
    maskbit_jax.sample(gen, ToyTokenizer(token_bits=4), [1], jax.random.key(0))
  with pytest.raises(TypeError, match="the generator comes first"):
    maskbit_jax.sample(tok, gen, [1], jax.random.key(0))
  # a config naming the family loads its models through the family's loaders
  cfg = load_config({"model": {"name": "toy_generator"}})
  assert registry.family_of(cfg).get("loader")(cfg) == gen
  assert registry.tokenizer_family_of(cfg).get("loader")(cfg) == tok


def test_registering_a_taken_name_needs_replace(toy_family):
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.Family(name="toy_generator", role="generator"))
  with pytest.raises(ValueError, match="built-in"):
    registry.unregister("maskbit_generator")
  with pytest.raises(ValueError, match="role must be one of"):
    registry.Family(name="x", role="decoder")


def test_an_unknown_family_is_a_one_line_error_naming_the_known_ones():
  with pytest.raises(ValueError) as e:
    registry.family_of(load_config({"model": {"name": "maskbit_generatr"}}))
  message = str(e.value)
  assert "\n" not in message and "did you mean 'maskbit_generator'" in message
  for name in registry.BUILTIN_NAMES:
    assert name in message
  with pytest.raises(ValueError, match="names no model family"):
    registry.family_of(load_config({"dataset": {}}))


# ---------------------------------------------------------------- model.name in configs

@pytest.mark.parametrize("model, name", [
    ({"vq_model": {"quantizer_type": "lookup-free"}}, "maskbit_tokenizer"),
    ({"vq_model": {}, "mlm_model": {}}, "maskbit_generator"),
    ({"vq_model": {}, "generator": {}}, "bar_generator"),
    ({"vq_model": {}, "siglip2": {}}, "bar_fsq_tokenizer"),
    ({"vq_model": {"vit_dec_patch_size": 16}, "discriminator": {}}, "bar_fsq_tokenizer"),  # BAR-FSQ's own yamls
])
def test_a_yaml_without_a_name_gets_it_inferred_where_it_is_loaded(tmp_path, model, name):
  import yaml

  path = tmp_path / "ref.yaml"
  path.write_text(yaml.safe_dump({"model": model}))
  assert load_config(str(path)).model.name == name
  # the stored config of an export written before model.name: the same, through load_config
  stored = json.loads(json.dumps({"model": model}))
  assert load_config(stored).model.name == name


def test_an_explicit_name_that_contradicts_the_sections_is_a_one_line_error(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text("model:\n  name: bar_generator\n  vq_model: {}\n  mlm_model: {}\n")
  with pytest.raises(ValueError) as e:
    load_config(str(path))
  assert "\n" not in str(e.value) and "'bar_generator'" in str(e.value) and "maskbit_generator" in str(e.value)
  with pytest.raises(ValueError, match="model.name is 'maskbit_tokenizer'"):
    load_config("generator_tiny", ["--config.model.name=maskbit_tokenizer"])


def test_every_packaged_config_names_a_registered_family_that_its_sections_agree_with():
  for name in packaged_config_names():
    cfg = load_config(name)
    fam = registry.family_of(cfg)
    assert fam.name == infer_model_name(cfg), name
    assert fam.task is not None and fam.checkpoint_kind is not None, name


# ---------------------------------------------------------------- protocols and the library / command split

def test_the_built_in_models_follow_the_protocols():
  tok = maskbit_jax.load_tokenizer("generator_tiny", random_init=True)
  gen = maskbit_jax.load_generator("generator_tiny", random_init=True)
  assert isinstance(tok, protocols.Tokenizer) and isinstance(gen, protocols.Generator)
  assert gen.num_classes == gen.nclass and registry.of(gen).name == "maskbit_generator"
  images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
  bits = tok.encode_bits(images)
  assert bits.shape == (2,) + tok.token_grid(16) + (tok.token_bits,)
  np.testing.assert_array_equal(np.asarray(tok.bits_to_images(bits)), np.asarray(tok.decode_tokens(tok.encode(images))))
  bar_gen = maskbit_jax.load_bar_generator("bar_tiny", random_init=True)
  assert isinstance(bar_gen, protocols.Generator) and registry.of(bar_gen).name == "bar_generator"
  fsq = maskbit_jax.load_bar_tokenizer("bar_fsq_tiny", random_init=True)  # decode-only
  assert isinstance(fsq, protocols.Tokenizer) and registry.of(fsq).bits == "bar_fsq"
  assert fsq.token_grid(None) == fsq.grid and fsq.image_size == fsq.grid[0] * fsq.latent_stride
  with pytest.raises(ValueError, match="with_encoder=True"):
    fsq.encode(np.zeros((1, fsq.image_size, fsq.image_size, 3), np.float32))


def test_the_library_imports_no_command_and_keeps_sample_and_edit_functions():
  code = """
import importlib, pkgutil, sys, types
import maskbit_jax
commands = {"maskbit_jax.sample", "maskbit_jax.edit", "maskbit_jax.evaluate", "maskbit_jax.pretokenize",
            "maskbit_jax.reconstruct", "maskbit_jax.convert.__main__", "maskbit_jax.train.__main__"}
for m in pkgutil.walk_packages(maskbit_jax.__path__, "maskbit_jax."):
  if m.name not in commands and not m.name.startswith(("maskbit_jax.cli", "maskbit_jax.configs")):
    importlib.import_module(m.name)
print(sorted(c for c in commands if c in sys.modules))
print(isinstance(maskbit_jax.sample, types.FunctionType), isinstance(maskbit_jax.edit, types.FunctionType))
import maskbit_jax.cli.sample, maskbit_jax.cli.edit  # the commands' own modules leave the functions alone
print(isinstance(maskbit_jax.sample, types.FunctionType), isinstance(maskbit_jax.edit, types.FunctionType))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
  assert out.stdout.split("\n")[:3] == ["[]", "True True", "True True"], out.stdout + out.stderr


@pytest.mark.parametrize("command", ["sample", "edit"])
def test_the_documented_python_m_commands_run_without_runpy_warnings(command):
  # their files share the library functions' names: run as __main__, they must not be imported first (runpy
  # warns then, and the package attribute would be the module)
  out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", f"maskbit_jax.{command}", "--help"],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0 and f"python -m maskbit_jax.{command}" in out.stdout, out.stderr
