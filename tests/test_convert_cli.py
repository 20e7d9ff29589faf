"""``python -m maskbit_jax.convert``: import, export, exact round trip, no damage to existing files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import golden_path, tokenizer_config
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.cli.convert import main as convert_main


def _names():
  path = golden_path() / "fixture_configs.json"
  if not path.is_file():
    return ["<no fixtures>"]
  return [n for n in json.loads(path.read_text())["configs"]
          if n.startswith("tokenizer") and (golden_path() / f"{n}.bin").is_file()]


@pytest.mark.parametrize("name", _names())
@pytest.mark.parametrize("suffix", [".bin", ".safetensors", ".npz"])
def test_import_export_reproduces_every_tensor(tmp_path, golden, fixture_configs, name, suffix):
  cfg_path = tmp_path / "cfg.json.py"
  cfg_path.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, name)!r}\n")
  assert convert_main(["--config", str(cfg_path), "--checkpoint", str(golden / f"{name}.bin"),
                       "--out", str(tmp_path / "ckpt")]) == 0
  assert convert_main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / f"back{suffix}")]) == 0
  original = read_state_dict(golden / f"{name}.bin")
  back = read_state_dict(tmp_path / f"back{suffix}")
  if suffix == ".safetensors":  # the format stores keys sorted, not in file order
    assert sorted(back) == sorted(original)
  else:
    assert list(back) == list(original)
  for key, value in original.items():
    assert back[key].dtype == value.dtype, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_existing_output_is_not_replaced(tmp_path, golden, fixture_configs):
  cfg_path = tmp_path / "c.py"
  cfg_path.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, 'tokenizer_tiny')!r}\n")
  args = ["--config", str(cfg_path), "--checkpoint", str(golden / "tokenizer_tiny.bin"), "--out", str(tmp_path / "o")]
  assert convert_main(args) == 0
  before = sorted(p.name for p in (tmp_path / "o").iterdir())
  with pytest.raises(FileExistsError):
    convert_main(args)
  assert sorted(p.name for p in (tmp_path / "o").iterdir()) == before
  # a failing conversion (wrong checkpoint) leaves the old checkpoint intact too
  with pytest.raises(ValueError):
    convert_main(args[:3] + [str(golden / "tokenizer_vq_tiny.bin"), "--out", str(tmp_path / "o"), "--overwrite"])
  assert sorted(p.name for p in (tmp_path / "o").iterdir()) == before


def test_cli_runs_as_a_module(tmp_path, golden, fixture_configs):
  config = tmp_path / "tokenizer_tiny.yaml"  # the fixture's own config, as a reference-style yaml
  config.write_text(json.dumps({"model": {"vq_model": fixture_configs["configs"]["tokenizer_tiny"]}}))
  out = subprocess.run([sys.executable, "-m", "maskbit_jax.convert", "--config", str(config),
                        "--checkpoint", str(golden / "tokenizer_tiny.bin"), "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  assert "round trip verified" in out.stdout


def _generator_names():
  path = golden_path() / "fixture_configs.json"
  if not path.is_file():
    return ["<no fixtures>"]
  return [n for n in json.loads(path.read_text())["configs"]
          if n.startswith("generator") and (golden_path() / f"{n}.bin").is_file()]


def generator_config(fixture_configs, name: str) -> dict:
  """A reference-nested config around a flat fixture generator config."""
  g = fixture_configs["configs"][name]
  bits = g["token_size"]
  vq = dict(model_class="vqgan+", quantizer_type="lookup-free", codebook_size=2**bits, token_size=bits,
            hidden_channels=32, channel_mult=[1] * (g["input_stride"].bit_length()), num_res_blocks=1)
  vq["num_resolutions"] = len(vq["channel_mult"])
  mlm = dict(model_cls="lfq_bert", **{k: g[k] for k in ("hidden_dim", "depth", "heads", "mlp_dim", "dropout",
                                                       "codebook_splits", "use_prenorm")})
  return {"model": {"vq_model": vq, "mlm_model": mlm, "nclass": g["nclass"]},
          "dataset": {"preprocessing": {"resolution": g["img_size"]}}}


@pytest.mark.parametrize("name", _generator_names())
def test_generator_import_export_keeps_released_names(tmp_path, golden, fixture_configs, name):
  cfg_path = tmp_path / "g.py"
  cfg_path.write_text(f"def get_config():\n  return {generator_config(fixture_configs, name)!r}\n")
  assert convert_main(["--config", str(cfg_path), "--checkpoint", str(golden / f"{name}.bin"),
                       "--out", str(tmp_path / "ckpt")]) == 0
  assert convert_main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back.bin")]) == 0
  original = read_state_dict(golden / f"{name}.bin")
  back = read_state_dict(tmp_path / "back.bin")
  assert list(back) == list(original) and any(k.startswith("token_emb.") for k in back)
  for key, value in original.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  # a file that already uses the model's own name input_proj.* loads too
  import maskbit_jax
  from maskbit_jax.convert.checkpoint_files import write_state_dict

  renamed = {k.replace("token_emb.", "input_proj."): v for k, v in original.items()}
  write_state_dict(tmp_path / "input_proj.npz", renamed)
  a = maskbit_jax.load_generator(str(cfg_path), golden / f"{name}.bin")
  b = maskbit_jax.load_generator(str(cfg_path), tmp_path / "input_proj.npz")
  c = maskbit_jax.load_generator(str(cfg_path), tmp_path / "ckpt")
  import jax

  for other in (b, c):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, a.params),
                 jax.tree.map(np.asarray, other.params))
  with pytest.raises(ValueError, match="generator"):
    maskbit_jax.load_tokenizer(str(cfg_path), tmp_path / "ckpt")


@pytest.mark.parametrize("name", _generator_names()[:1])
def test_folder_in_the_per_layer_layout_loads_and_exports(tmp_path, golden, fixture_configs, name):
  """Folders written before the blocks ran as a scan (one module per layer) load stacked, and export exactly."""
  import jax

  import maskbit_jax
  from maskbit_jax import checkpointing
  from maskbit_jax.convert.generator_mapping import generator_param_mapping
  from maskbit_jax.convert.param_mapping import CheckpointMismatchError

  cfg_path = tmp_path / "g.py"
  cfg = generator_config(fixture_configs, name)
  cfg_path.write_text(f"def get_config():\n  return {cfg!r}\n")
  gen = maskbit_jax.load_generator(str(cfg_path), golden / f"{name}.bin")
  mapping = generator_param_mapping(gen.module.bits_per_split)
  per_layer = mapping.per_layer(jax.tree.map(np.asarray, gen.params))
  assert "transformer_layers_0_0" in per_layer and "transformer_layers" not in per_layer
  checkpointing.save_params(tmp_path / "old", per_layer, kind="generator", config=cfg)
  old = maskbit_jax.load_generator(str(cfg_path), tmp_path / "old")
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, gen.params),
               jax.tree.map(np.asarray, old.params))
  assert convert_main(["--checkpoint", str(tmp_path / "old"), "--out", str(tmp_path / "back.bin")]) == 0
  original, back = read_state_dict(golden / f"{name}.bin"), read_state_dict(tmp_path / "back.bin")
  assert set(back) == set(original)
  for key, value in original.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  del per_layer["transformer_layers_1_1"]  # a folder in neither layout is refused by name
  checkpointing.save_params(tmp_path / "broken", per_layer, kind="generator", config=cfg)
  with pytest.raises(CheckpointMismatchError, match="transformer_layers"):
    maskbit_jax.load_generator(str(cfg_path), tmp_path / "broken")
