"""BAR training on MaskBit's bit tokens (``configs/bar_tiny.py``): learning, sampling end to end, exact resume.

The frozen tokenizer is a random-init ``configs/tokenizer_tiny.py`` saved like a
stage-I export; bits are made from the embedded synthetic images inside the
step on one CPU device. Every run uses the same overrides (``COMMON``), so the
train step compiles once per suite (XLA compilation cache, see conftest).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

import maskbit_jax
from conftest import REPO, golden_bar_path, restored_state
from maskbit_jax import bar, checkpointing, sharding
from maskbit_jax.models.tokenizer import latent_stride_of
from maskbit_jax.cli.sample import main as sample_main
from maskbit_jax.train.bar_step import indices_to_bit_rows
from maskbit_jax.train.bar_task import BarTask, bit_train_dataset, record_bits
from maskbit_jax.train.loop import train
from maskbit_jax.train.tasks import make_task, stage_of

BAR_TINY = str(REPO / "configs/bar_tiny.py")
TOK_TINY = str(REPO / "configs/tokenizer_tiny.py")
LOSS_STEPS = 80
# Measured on this setup (CPU; batch 16, lr 1e-3 after 10 warm-up steps): first-5-step mean 0.681, mean of
# steps 76-80 0.544 (ratio 0.80; 0.83 after 60 steps, ~0.69 after the config's 600 steps at batch 32).
# Bits of a random tokenizer are partly unpredictable, so the curve flattens; 0.88 leaves ~10 % headroom.
LOSS_RATIO = 0.88
COMMON = ["--config.runtime.num_devices=1", "--config.dataset.num_threads=1",
          "--config.training.per_gpu_batch_size=16", "--config.training.max_train_steps=400",
          "--config.lr_scheduler.params.warmup_steps=10",
          # random generation orders for steps 0-2, raster from step 5: resume crosses the ramp
          "--config.model.generator.randomness_anneal_start=2", "--config.model.generator.randomness_anneal_end=5",
          "--config.experiment.log_every=1", "--config.experiment.generate_every=1000",
          "--config.experiment.save_every=1000"]


def bar_config(tokenizer_dir, *overrides):
  return maskbit_jax.load_config(BAR_TINY, COMMON + [f"--config.experiment.vqgan_checkpoint={tokenizer_dir}"]
                                 + list(overrides))


@pytest.fixture(scope="module")
def random_tokenizer(tmp_path_factory):
  tok = maskbit_jax.load_tokenizer(TOK_TINY, random_init=True, seed=3)
  path = tmp_path_factory.mktemp("tok") / "tokenizer"
  checkpointing.save_params(path, tok.params, kind="tokenizer", config=tok.config.to_dict())
  return str(path)


@pytest.fixture(scope="module")
def trained(random_tokenizer, tmp_path_factory):
  """``LOSS_STEPS`` steps of the task on the mesh the loop builds; returns (task, state, losses)."""
  cfg = bar_config(random_tokenizer)
  assert stage_of(cfg) == "bar"
  mesh = sharding.create_mesh(dict(cfg.runtime.mesh), jax.devices()[:1])
  task = make_task(cfg, mesh, str(tmp_path_factory.mktemp("bar_run")))
  assert isinstance(task, BarTask) and task.global_batch == 16
  state, data = task.init_state(), iter(task.dataset())
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):  # as the loop traces it
    for i in range(LOSS_STEPS):
      state, metrics = task.step(state, task.to_device(next(data)), i)
      losses.append(float(metrics["mbm_loss"]))
  return task, state, np.asarray(losses)


def test_loss_goes_down(trained):
  task, state, losses = trained
  first, last = losses[:5].mean(), losses[-5:].mean()
  assert np.all(np.isfinite(losses))
  assert last < LOSS_RATIO * first, f"MBM loss {first:.4f} -> {last:.4f}: expected a drop of {1 - LOSS_RATIO:.0%}"
  assert int(state.step) == LOSS_STEPS
  assert state.ema_params is None  # the released recipe keeps no EMA


def test_export_and_sample_end_to_end(trained, random_tokenizer, tmp_path):
  """Export -> ``python -m maskbit_jax.sample`` -> valid bits, tokens in range, finite images, PNGs."""
  task, state, _ = trained
  export = task.export(state)
  gen = bar.load_bar_generator(task.cfg, export)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(gen.params), jax.device_get(state.params))
  out = tmp_path / "samples"
  classes = [0, 5, 15]
  assert sample_main(["--config", BAR_TINY, "--tokenizer", random_tokenizer, "--generator", export,
                      "--classes", ",".join(map(str, classes)), "--samples_per_class", "2", "--out", str(out)]) == 0
  data = np.load(out / "tokens.npz")
  bits, tokens = data["bits"], data["tokens"]
  cfg = maskbit_jax.load_config(BAR_TINY)
  side = cfg.dataset.preprocessing.resolution // latent_stride_of(cfg.model.vq_model)
  assert bits.shape == (6, side * side * 12) and set(np.unique(bits)) <= {0, 1}
  assert tokens.shape == (6, side, side) and tokens.min() >= 0 and tokens.max() < 2**12
  # tokens are the bits packed as LFQ indices (bit j = channel j)
  np.testing.assert_array_equal(np.asarray(indices_to_bit_rows(tokens, 12)), bits)
  assert list(data["labels"]) == [0, 0, 5, 5, 15, 15]
  size = cfg.dataset.preprocessing.resolution
  png = np.asarray(Image.open(out / "00000_class0.png"))
  assert png.shape == (size, size, 3)
  summary = json.loads((out / "summary.json").read_text())
  # bar_tiny's sampling settings: 2x2 patches of 12-bit tokens, 48 bits a step in four inner steps of 12
  assert summary["settings"] == {"guidance_scale": 2.0, "randomize_temperature": 1.0, "tokens_allocation": [12] * 4}
  # the images decode from the tokens with the frozen tokenizer, finite
  tok = maskbit_jax.load_tokenizer(task.cfg, random_tokenizer)
  images = np.asarray(tok.decode_tokens(tokens))
  assert images.shape == (6, size, size, 3) and np.all(np.isfinite(images))


def test_resume_is_bit_identical(tmp_path, random_tokenizer):
  """3 steps, stop, resume 3 more == 6 straight (through the random -> raster order ramp), bit for bit."""
  split, straight = str(tmp_path / "split"), str(tmp_path / "straight")
  first = train(bar_config(random_tokenizer), split, num_steps=3)
  assert first["stage"] == "bar" and first["end_step"] == 3 and not first["finished"]
  second = train(bar_config(random_tokenizer), split, num_steps=3)
  assert second["start_step"] == 3 and second["end_step"] == 6
  train(bar_config(random_tokenizer), straight, num_steps=6)
  step_a, a, meta_a = restored_state(split)
  step_b, b, meta_b = restored_state(straight)
  assert step_a == step_b == 6 and meta_a["stage"] == "bar"
  assert meta_a["data"] == meta_b["data"]
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(_plain(x), _plain(y))


def _plain(x) -> np.ndarray:
  is_key = jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)
  return np.asarray(jax.random.key_data(x) if is_key else x)


def test_pretokenized_bits_reader():
  """Records of LFQ tokens (and of raw bits) become the bits of the original or the flipped image."""
  rng = np.random.default_rng(0)
  records = [dict(tokens=rng.integers(0, 2**12, (4, 4)), tokens_flipped=rng.integers(0, 2**12, (4, 4)), label=i)
             for i in range(8)]
  ex = records[0]
  np.testing.assert_array_equal(record_bits(ex, False, 12), np.asarray(indices_to_bit_rows(ex["tokens"][None], 12))[0])
  bits = dict(bits=rng.integers(0, 2, (16, 12)), bits_flipped=rng.integers(0, 2, (16, 12)), label=0)
  np.testing.assert_array_equal(record_bits(bits, True, 12), bits["bits_flipped"].reshape(-1))
  batch = next(iter(bit_train_dataset(records, batch_size=8, seed=0, token_bits=12, num_threads=1)))
  assert batch["bits"].shape == (8, 192) and batch["bits"].dtype == np.uint8
  for row, label in zip(batch["bits"], batch["label"]):
    ex = records[int(label)]
    options = [record_bits(ex, flip, 12) for flip in (False, True)]
    assert any(np.array_equal(row, o) for o in options)
  with pytest.raises(KeyError, match="'bits' or 'tokens'"):
    record_bits(dict(label=0), False, 12)


def test_bar_fsq_training_needs_a_token_set(tmp_path):
  cfg = maskbit_jax.load_config(str(REPO / "configs/bar_b.py"))
  assert stage_of(cfg) == "bar"
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  with pytest.raises(ValueError, match="dataset.pretokenized"):
    make_task(cfg, mesh, str(tmp_path))


@pytest.mark.slow
def test_bits_made_in_the_step_equal_pretokenized_bits(tmp_path, random_tokenizer):
  """One step on images (tokenizer inside the step) == one step on the bits of their tokens; and a task on a
  ``pretokenize`` token set trains on those bits."""
  from maskbit_jax.data.sources import make_source
  from maskbit_jax.data.pretokenize import pretokenize
  from maskbit_jax.train import bar_step as bs

  cfg = bar_config(random_tokenizer)
  mesh = sharding.create_mesh(dict(cfg.runtime.mesh), jax.devices()[:1])
  task = make_task(cfg, mesh, str(tmp_path / "run"))
  batch = jax.device_get(next(iter(task.dataset())))
  tok = task.tokenizer
  bits = indices_to_bit_rows(tok.encode(batch["image"]), task.module.token_bits)
  kw = dict(module=task.module, tx=task.tx, settings=task.settings)
  on_images = jax.jit(lambda s, b, tp: bs.bar_train_step_on_images(s, b, tp, tokenizer=tok.module, **kw))
  on_bits = jax.jit(lambda s, b: bs.bar_train_step(s, b, **kw))
  state = jax.device_get(task.init_state())
  s1, m1 = on_images(state, batch, tok.params)
  s2, m2 = on_bits(state, {"bits": bits, "label": batch["label"]})
  np.testing.assert_allclose(float(m1["mbm_loss"]), float(m2["mbm_loss"]), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
               s1.params, s2.params)

  pre = str(tmp_path / "tokens")
  # host copies of the params: pretokenize spreads the images over every device
  host_tok = dataclasses.replace(tok, params=jax.device_get(tok.params))
  pretokenize(host_tok, make_source("synthetic:32", 32), pre, batch_size=16)
  cfg = bar_config(random_tokenizer, f"--config.dataset.pretokenized={pre}")
  task = make_task(cfg, mesh, str(tmp_path / "run_pre"))
  assert set(task.batch_shardings) == {"bits", "label"}
  batch = task.to_device(next(iter(task.dataset())))
  with jax.set_mesh(mesh):
    state, metrics = task.step(task.init_state(), batch, 0)
  assert int(state.step) == 1 and np.isfinite(float(metrics["mbm_loss"]))


# ----------------------------------------------------------------- conversion of BAR weights (golden_bar files)

def _golden_bar():
  path = golden_bar_path()
  if not (path / "fixture_configs.json").is_file():
    pytest.skip(f"BAR golden fixtures not found at {path} (set MASKBIT_GOLDEN_BAR)")
  return path, json.loads((path / "fixture_configs.json").read_text())


@pytest.mark.parametrize("name", ["generator_tiny", "tokenizer_tiny"])
def test_convert_cli_bar_round_trip(tmp_path, name):
  """``python -m maskbit_jax.convert`` imports a BAR file and exports it back tensor for tensor (the RoPE
  tables, regenerated from the config, within ROPE_ATOL)."""
  from maskbit_jax.convert.bar_mapping import ROPE_ATOL
  from maskbit_jax.convert.checkpoint_files import read_state_dict
  from maskbit_jax.cli.convert import main as convert_main

  golden, configs = _golden_bar()
  cfg = json.loads(json.dumps(configs[name]))
  if name.startswith("tokenizer"):
    cfg["model"]["siglip2"] = configs[f"{name}_siglip2_vision_config"]
    cfg["model"]["vit_decoder"] = configs[f"{name}_decoder_overrides"]
  cfg_path = tmp_path / "cfg.py"
  cfg_path.write_text(f"def get_config():\n  return {cfg!r}\n")
  source = golden / f"{name}.bin"
  assert convert_main(["--config", str(cfg_path), "--checkpoint", str(source), "--out", str(tmp_path / "ckpt")]) == 0
  kind = checkpointing.read_meta(tmp_path / "ckpt")["kind"]
  assert kind == ("bar_generator" if name.startswith("generator") else "bar_tokenizer")
  assert convert_main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back.bin")]) == 0
  original, back = read_state_dict(source), read_state_dict(tmp_path / "back.bin")
  assert list(back) == list(original)
  for key, value in original.items():
    assert back[key].dtype == value.dtype, key
    if ".rope.freqs_" in key:
      np.testing.assert_allclose(back[key], value, rtol=0, atol=ROPE_ATOL, err_msg=key)
    else:
      np.testing.assert_array_equal(back[key], value, err_msg=key)
  if name.startswith("generator"):  # the converted folder loads through the public API
    gen = bar.load_bar_generator(cfg, tmp_path / "ckpt")
    assert gen.token_bits == int(cfg["model"]["vq_model"]["token_size"])
