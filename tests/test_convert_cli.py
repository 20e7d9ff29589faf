"""``python -m maskbit_jax.convert``: import, export, exact round trip, no damage to existing files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, golden_path, tokenizer_config
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.cli import main as convert_main


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


def test_cli_runs_as_a_module(tmp_path, golden):
  out = subprocess.run([sys.executable, "-m", "maskbit_jax.convert", "--config", str(REPO / "configs/tokenizer_tiny.py"),
                        "--checkpoint", str(golden / "tokenizer_tiny.bin"), "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  assert "round trip verified" in out.stdout
