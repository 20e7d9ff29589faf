"""``python -m maskbit_jax.sample``: PNGs, a labelled grid and tokens; random weights only on request."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import maskbit_jax
from conftest import REPO
from maskbit_jax.models.tokenizer import latent_stride_of
from maskbit_jax.cli.sample import main as sample_main

TINY = str(REPO / "configs/generator_tiny.py")


def test_sample_cli_random_init(tmp_path, capsys):
  out = tmp_path / "s"
  size = maskbit_jax.load_config(TINY).dataset.preprocessing.resolution
  assert sample_main(["--config", TINY, "--random_init", "--classes", "1,7,15", "--samples_per_class", "2",
                      "--num_steps", "3", "--batch_size", "4", "--out", str(out)]) == 0
  assert "random (untrained)" in capsys.readouterr().out
  pngs = sorted(p.name for p in out.glob("0*.png"))
  assert len(pngs) == 6 and pngs[0] == "00000_class1.png" and pngs[-1] == "00005_class15.png"
  assert np.asarray(Image.open(out / pngs[0])).shape == (size, size, 3)
  assert (out / "grid.png").is_file()
  data = np.load(out / "tokens.npz")
  side = size // latent_stride_of(maskbit_jax.load_config(TINY).model.vq_model)
  assert data["tokens"].shape == (6, side, side) and list(data["labels"]) == [1, 1, 7, 7, 15, 15]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["settings"]["num_steps"] == 3 and summary["settings"]["guidance_scale"] == 3.0


def test_sample_cli_config_override_and_errors(tmp_path):
  assert sample_main(["--config", TINY, "--random_init", "--classes", "5", "--out", str(tmp_path / "a"),
                      "--config.model.mlm_model.num_steps=2"]) == 0
  assert json.loads((tmp_path / "a" / "summary.json").read_text())["settings"]["num_steps"] == 2
  nclass = maskbit_jax.load_config(TINY).model.nclass
  with pytest.raises(ValueError, match=rf"\[0, {nclass}\)"):
    sample_main(["--config", TINY, "--random_init", "--classes", str(nclass), "--out", str(tmp_path / "b")])
  with pytest.raises(SystemExit):
    sample_main(["--config", TINY, "--random_init", "--classes", "a,b", "--out", str(tmp_path / "c")])
  with pytest.raises(ValueError, match="random_init"):
    sample_main(["--config", TINY, "--classes", "1", "--out", str(tmp_path / "d")])
  for bad in (["--classes", ","], ["--classes", "1", "--samples_per_class", "0"],
              ["--classes", "1", "--batch_size", "-2"]):
    with pytest.raises(SystemExit):
      sample_main(["--config", TINY, "--random_init", "--out", str(tmp_path / "e"), *bad])
    assert not (tmp_path / "e").exists()


def test_released_defaults_pass_back_into_sample():
  gen = maskbit_jax.load_generator(TINY, random_init=True)
  tok = maskbit_jax.load_tokenizer(TINY, random_init=True)
  import jax

  defaults = dict(gen.sampling_defaults, num_steps=2)
  assert "mask_schedule_strategy" in defaults
  out = maskbit_jax.sample(gen, tok, [0], jax.random.key(0), **defaults)
  side = gen.module.img_size // gen.module.input_stride
  assert out["tokens"].shape == (1, side, side)


def test_sample_is_callable_from_the_package():
  import importlib

  importlib.import_module("maskbit_jax.cli.sample")  # importing the CLI module must not break the function
  assert callable(maskbit_jax.sample)


def test_sample_api_names_its_argument_mistakes():
  import jax

  gen = maskbit_jax.load_generator(TINY, random_init=True)
  tok = maskbit_jax.load_tokenizer(TINY, random_init=True)
  with pytest.raises(ValueError, match="labels is empty"):
    maskbit_jax.sample(gen, tok, [], jax.random.key(0))
  with pytest.raises(TypeError, match="the generator comes first"):
    maskbit_jax.sample(tok, gen, [1], jax.random.key(0))
  with pytest.raises(TypeError, match=r"jax.random.key\(0\)"):
    maskbit_jax.sample(gen, tok, [1], 0)


def test_sample_takes_the_config_stored_with_a_generator_export(tmp_path):
  from maskbit_jax import checkpointing

  cfg = maskbit_jax.load_config(TINY)
  gen = maskbit_jax.load_generator(cfg, random_init=True)
  tok = maskbit_jax.load_tokenizer(cfg, random_init=True)
  tok_dir = checkpointing.save_params(tmp_path / "tok", checkpointing.to_numpy(tok.params), kind="tokenizer",
                                      config=cfg.to_dict())
  cfg.experiment.vqgan_checkpoint = tok_dir
  gen_dir = checkpointing.save_params(tmp_path / "gen", checkpointing.to_numpy(gen.params), kind="generator",
                                      config=cfg.to_dict())
  assert sample_main(["--generator", gen_dir, "--classes", "1,2", "--num_steps", "2", "--out", str(tmp_path / "s")]) == 0
  assert json.loads((tmp_path / "s" / "summary.json").read_text())["images"] == 2
