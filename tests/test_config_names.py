"""Configs by packaged name (``generator_tiny``, ``tokenizer_tiny:bits=10``), and ``--config.x.y=`` overrides
parsed as the field's type (every type the configs hold), with one-line errors naming the key and the type."""

from __future__ import annotations

import importlib
import tomllib

import ml_collections
import pytest

from conftest import REPO
from maskbit_jax import cli_errors, console_scripts
from maskbit_jax.config import load_config, packaged_config_names
from maskbit_jax.cli.sample import main as sample_main


def test_every_config_file_is_a_packaged_name():
  files = sorted(p.stem for p in (REPO / "configs").glob("*.py") if not p.name.startswith("_"))
  assert packaged_config_names() == files and "maskbit_generator_12bit" in files


@pytest.mark.parametrize("name, path", [
    ("generator_tiny", "configs/generator_tiny.py"),
    ("generator_tiny.py", "configs/generator_tiny.py"),
    ("tokenizer_tiny:bits=10", "configs/tokenizer_tiny.py:bits=10"),
    ("maskbit_generator_12bit", "configs/maskbit_generator_12bit.py"),
])
def test_a_name_loads_what_its_file_loads(name, path, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # no configs/ folder here: the name resolves to the package
  assert load_config(name).to_dict() == load_config(str(REPO / path)).to_dict()


def test_the_variant_argument_reaches_get_config(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  assert load_config("tokenizer_tiny:bits=10").model.vq_model.token_size == 10


def test_an_existing_path_wins_over_the_packaged_name(monkeypatch, tmp_path):
  (tmp_path / "generator_tiny.py").write_text("def get_config():\n  return {'mine': 1}\n")
  monkeypatch.chdir(tmp_path)
  assert load_config("generator_tiny.py").to_dict() == {"mine": 1}
  assert "model" in load_config("generator_tiny")  # the bare name is not that file


@pytest.mark.parametrize("spec, hint", [
    ("generatr_tiny", "no config file or packaged config named: generatr_tiny; did you mean 'generator_tiny'"),
    ("generatr_tiny:bits=3", "no config file or packaged config named: generatr_tiny; did you mean"),
    ("configs/maskbit_generatr_12bit.py", "config file not found: configs/maskbit_generatr_12bit.py; "
     "did you mean 'maskbit_generator_12bit'"),
    ("qqqqq", "packaged configs: bar_b, "),
])
def test_an_unknown_name_is_a_one_line_error_with_close_names(spec, hint, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError) as err:
    load_config(spec)
  assert hint in str(err.value) and "\n" not in str(err.value)


def test_the_commands_take_a_name(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert cli_errors.run(sample_main, ["--config", "generatr_tiny", "--random_init", "--classes", "1",
                                      "--out", str(tmp_path / "s")]) == cli_errors.EXIT_USER_ERROR
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "did you mean 'generator_tiny'" in errors[0]


def _cfg() -> ml_collections.ConfigDict:
  """One field of each type the configs hold (int, float, bool, str, list of int), plus tuples, lists of
  float/str, an empty list and a None-valued field."""
  return ml_collections.ConfigDict(dict(a=dict(
      n=3, lr=1e-4, flag=False, name="x", mult=[1, 2, 2], tup=(1, 1), floats=[0.5, 1.0], words=["a", "b"],
      empty=[], nothing=None)))


@pytest.mark.parametrize("key, text, want", [
    ("n", "12", 12),
    ("lr", "2e-3", 2e-3),
    ("lr", "1", 1.0),
    ("flag", "true", True),
    ("flag", "0", False),
    ("name", "1,2", "1,2"),
    ("mult", "1,1,2", [1, 1, 2]),
    ("mult", "(1,2,2,4)", [1, 2, 2, 4]),
    ("mult", "[1,2]", [1, 2]),
    ("mult", " [ 1 , 2 ] ", [1, 2]),
    ("mult", "4", [4]),
    ("mult", "(4,)", [4]),
    ("mult", "[]", []),
    ("tup", "1,2,2", (1, 2, 2)),
    ("tup", "[3]", (3,)),
    ("floats", "1,2.5", [1.0, 2.5]),
    ("words", "c,d", ["c", "d"]),
    ("empty", "1,2", [1, 2]),
    ("nothing", "7", 7),
    ("nothing", "[1, 2]", [1, 2]),
])
def test_an_override_takes_the_field_type(key, text, want):
  cfg = load_config(_cfg(), [f"--config.a.{key}={text}"])
  got = cfg.a[key]
  assert got == want and type(got) is type(want)


def test_channel_mult_of_the_docs_example():
  cfg = load_config(str(REPO / "configs/tokenizer_tiny.py"), ["--config.model.vq_model.channel_mult=1,1,2"])
  assert cfg.model.vq_model.channel_mult == [1, 1, 2]


@pytest.mark.parametrize("key, text, message", [
    ("n", "1.5", "--config.a.n: expected an integer, got '1.5'"),
    ("lr", "fast", "--config.a.lr: expected a number, got 'fast'"),
    ("flag", "maybe", "--config.a.flag: expected a boolean, got 'maybe'"),
    ("mult", "1,x,2", "--config.a.mult: expected a list of int, got '1,x,2'"),
    ("tup", "(1,,2)", "--config.a.tup: expected a tuple of int, got '(1,,2)'"),
    ("floats", "1,a", "--config.a.floats: expected a list of float, got '1,a'"),
])
def test_an_unparsable_override_names_the_key_and_the_type(key, text, message):
  with pytest.raises(ValueError) as err:
    load_config(_cfg(), [f"--config.a.{key}={text}"])
  assert str(err.value) == message


def test_each_console_script_is_a_command_main():
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  assert set(scripts) == set(console_scripts.COMMANDS)
  for script, target in scripts.items():
    module, func = target.split(":")
    assert module == "maskbit_jax.console_scripts" and callable(getattr(console_scripts, func))
    assert script == f"maskbit-{func}"
    assert callable(importlib.import_module(console_scripts.COMMANDS[script]).main)
