"""The README's main job: tokenize and reconstruct the embedded photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import maskbit_jax
from conftest import REPO, tokenizer_config
from maskbit_jax.data.sample_images import sample_photos, synthetic_images
from maskbit_jax.cli.reconstruct import main as reconstruct_main


def test_embedded_photos():
  images, names = sample_photos(32)
  assert images.shape == (len(names), 32, 32, 3) and images.dtype == np.float32
  assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.1


def test_synthetic_set_is_deterministic_and_labelled():
  a, la = synthetic_images(12, 32, seed=3)
  b, lb = synthetic_images(12, 32, seed=3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  c, _ = synthetic_images(12, 32, seed=4)
  assert not np.array_equal(a, c)
  assert a.min() >= 0 and a.max() <= 1 and la.min() >= 0 and la.max() < 16
  with pytest.raises(ValueError, match="num_classes"):
    synthetic_images(2, 8, num_classes=17)


def test_reconstruct_with_released_style_checkpoint(tmp_path, golden, fixture_configs):
  cfg_path = tmp_path / "cfg.py"
  cfg_path.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, 'tokenizer_tiny')!r}\n")
  out = tmp_path / "out"
  assert reconstruct_main(["--config", str(cfg_path), "--checkpoint", str(golden / "tokenizer_tiny.bin"),
                           "--size", "32", "--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  side = 32 // tok.latent_stride  # the fixture tokenizer's grid at 32 px
  assert summary["token_grid"] == [side, side] and summary["random_init"] is False
  grid = np.asarray(Image.open(out / "reconstructions.png"))
  assert grid.ndim == 3 and grid.shape[-1] == 3
  tokens = np.load(out / "tokens.npz")["tokens"]
  assert tokens.shape == (summary["images"], side, side)
  np.testing.assert_array_equal(tokens, np.asarray(tok.encode(sample_photos(32)[0])))  # the photos' tokens


def test_reconstruct_random_init_is_explicit(tmp_path, capsys):
  assert reconstruct_main(["--config", str(REPO / "configs/tokenizer_tiny.py"), "--random_init", "--size", "32",
                           "--out", str(tmp_path)]) == 0
  assert "random (untrained)" in capsys.readouterr().out
  with pytest.raises(ValueError, match="random_init"):
    reconstruct_main(["--config", str(REPO / "configs/tokenizer_tiny.py"), "--out", str(tmp_path)])


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
  """An export of the tiny tokenizer as training writes it (random weights; its config stored inside)."""
  from maskbit_jax import checkpointing

  cfg = maskbit_jax.load_config(str(REPO / "configs/tokenizer_tiny.py"))
  tok = maskbit_jax.load_tokenizer(cfg, random_init=True)
  return checkpointing.save_params(tmp_path_factory.mktemp("exp") / "tokenizer", checkpointing.to_numpy(tok.params),
                                   kind="tokenizer", config=cfg.to_dict())


def test_reconstruct_takes_an_exports_config_and_its_held_out_images(tmp_path, tiny_export, capsys):
  from maskbit_jax.cli import reconstruct

  assert reconstruct_main(["--checkpoint", tiny_export, "--num_images", "3", "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert f"synthetic:3:{reconstruct.HELD_OUT_SEED}" in out
  summary = json.loads((tmp_path / "summary.json").read_text())
  cfg = maskbit_jax.load_config(str(REPO / "configs/tokenizer_tiny.py"))
  assert summary["images"] == 3 and summary["size"] == cfg.dataset.preprocessing.resolution
  held_out, _ = synthetic_images(3, summary["size"], seed=reconstruct.HELD_OUT_SEED)
  trained, _ = synthetic_images(3, summary["size"], seed=cfg.training.seed)
  assert not np.array_equal(held_out, trained)


def test_reconstruct_images_from_a_data_source(tmp_path, capsys):
  assert reconstruct_main(["--config", str(REPO / "configs/tokenizer_tiny.py"), "--random_init",
                           "--images", "synthetic:5", "--num_images", "2", "--out", str(tmp_path)]) == 0
  assert json.loads((tmp_path / "summary.json").read_text())["images"] == 2
  with pytest.raises(SystemExit):
    reconstruct_main(["--random_init", "--out", str(tmp_path / "b")])  # no config, no export to take it from
  assert "unless --checkpoint is one of our exports" in capsys.readouterr().err
