"""``maskbit_jax.edit`` / ``vary`` / ``edit.outpaint`` and ``python -m maskbit_jax.edit``.

MaskBit on the golden ``generator_tiny`` + ``tokenizer_tiny`` (64 px, 4x4 tokens of 12 bits in 2 splits);
BAR on ``configs/bar_tiny.py`` (random weights: 8x8 tokens, AR steps of 2x2). Kept tokens and bits must be
those of the input exactly; the calls of one test share one batch shape and settings, so one compiled program.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

import maskbit_jax
from conftest import REPO, load_npz, tokenizer_config
from maskbit_jax.convert.generator_mapping import generator_param_mapping
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.sampling.editing import (KeepMaskError, box_keep_mask, kept_bits_mask, outpaint_windows, token_keep_mask)
from maskbit_jax.generator import Generator
from maskbit_jax.models.maskbit_transformer import abstract_generator_params, build_generator_module

# the settings and batch of test_sampling_pipeline's sampling: its compiled program is in the suite's cache
SETTINGS = dict(num_steps=4, guidance_scale=2.0)


@pytest.fixture(scope="module")
def models(golden, fixture_configs):
  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  module = build_generator_module(fixture_configs["configs"]["generator_tiny"])
  params = torch_state_to_flax(load_npz(golden / "generator_tiny_state.npz"),
                               nn.meta.unbox(abstract_generator_params(module)),
                               generator_param_mapping(module.bits_per_split))
  gen = Generator(maskbit_jax.load_config({"model": {"mlm_model": {}}}), module, jax.tree.map(jnp.asarray, params))
  side = int(round(gen.seq_len ** 0.5)) * tok.latent_stride
  images = np.random.default_rng(0).random((4, side, side, 3)).astype(np.float32)
  return gen, tok, images


def _np(out, key):
  return np.asarray(out[key])


def test_kept_tokens_exact_and_same_key_same_images(models):
  gen, tok, images = models
  labels = [1, 7, 282, 999]
  h = int(round(gen.seq_len ** 0.5))
  keep = np.zeros((h, h), bool)
  keep[: h // 2] = True
  a = maskbit_jax.edit(gen, tok, images, keep, labels, jax.random.key(0), **SETTINGS)
  b = maskbit_jax.edit(gen, tok, images, keep, labels, jax.random.key(0), **SETTINGS)
  c = maskbit_jax.edit(gen, tok, images, keep, labels, jax.random.key(1), **SETTINGS)
  tokens, source = _np(a, "tokens"), np.asarray(tok.encode(images))
  np.testing.assert_array_equal(_np(a, "input_tokens"), source)
  np.testing.assert_array_equal(tokens[:, : h // 2], source[:, : h // 2])
  assert (tokens[:, h // 2:] != source[:, h // 2:]).any()  # the rest is generated
  np.testing.assert_array_equal(tokens, _np(b, "tokens"))
  np.testing.assert_array_equal(_np(a, "images"), _np(b, "images"))
  assert not np.array_equal(tokens, _np(c, "tokens"))
  np.testing.assert_array_equal(_np(c, "tokens")[:, : h // 2], source[:, : h // 2])
  assert a["images"].shape == images.shape
  full = maskbit_jax.edit(gen, tok, images, np.ones(images.shape[1:3]), labels, jax.random.key(0), **SETTINGS)
  np.testing.assert_array_equal(_np(full, "tokens"), source)  # everything kept: the input's tokens


@pytest.mark.slow
def test_empty_mask_is_sample_and_full_mask_is_reconstruction(models):
  gen, tok, images = models
  labels = [1, 7, 282, 999]
  empty = maskbit_jax.edit(gen, tok, images, np.zeros(images.shape[1:3]), labels, jax.random.key(2), **SETTINGS)
  plain = maskbit_jax.sample(gen, tok, labels, jax.random.key(2), **SETTINGS)
  np.testing.assert_array_equal(_np(empty, "tokens"), _np(plain, "tokens"))
  np.testing.assert_allclose(_np(empty, "images"), _np(plain, "images"), rtol=1e-4, atol=1e-4)
  full = maskbit_jax.edit(gen, tok, images, np.ones(images.shape[1:3]), labels, jax.random.key(2), **SETTINGS)
  np.testing.assert_array_equal(_np(full, "tokens"), np.asarray(tok.encode(images)))
  np.testing.assert_allclose(_np(full, "images"), np.asarray(tok.decode_tokens(tok.encode(images))), rtol=1e-4,
                             atol=1e-4)


def test_vary_keeps_the_requested_bits(models):
  gen, tok, images = models
  labels = [1, 1, 1, 1]
  bits = gen.token_bits
  source = np.asarray(tok.encode(images))
  for keep_bits in (bits // 2 + 1, [0, bits // 2, bits - 1]):  # crosses a split; a scattered set
    mask = kept_bits_mask(keep_bits, bits)
    out = _np(maskbit_jax.vary(gen, tok, images, keep_bits, labels, jax.random.key(0), **SETTINGS), "tokens")
    np.testing.assert_array_equal(out & mask, source & mask, err_msg=str(keep_bits))
    assert (out != source).mean() > 0.5, keep_bits  # the free bits were resampled
  full = maskbit_jax.vary(gen, tok, images, bits, labels, jax.random.key(0), **SETTINGS)
  np.testing.assert_array_equal(_np(full, "tokens"), source)
  edited = maskbit_jax.edit(gen, tok, images, np.ones(images.shape[1:3]), labels, jax.random.key(0), **SETTINGS)
  np.testing.assert_array_equal(_np(full, "images"), _np(edited, "images"))  # the reconstruction, as edit's


@pytest.mark.slow
def test_one_image_many_labels_and_outpaint(models):
  gen, tok, images = models
  h = int(round(gen.seq_len ** 0.5))
  out = maskbit_jax.edit.outpaint(gen, tok, images[0], [2, 9], jax.random.key(0), pad=(1, 2, 0, 1), **SETTINGS)
  tokens = _np(out, "tokens")
  assert tokens.shape == (2, h + 3, h + 1)
  assert out["images"].shape == (2, (h + 3) * tok.latent_stride, (h + 1) * tok.latent_stride, 3)
  np.testing.assert_array_equal(tokens[:, 1:1 + h, :h], np.repeat(np.asarray(tok.encode(images[:1])), 2, axis=0))
  assert not np.array_equal(tokens[0], tokens[1])


def test_masks_and_windows():
  keep = box_keep_mask((8, 8), (2, 0, 6, 4))
  assert keep.sum() == 64 - 16 and not keep[0, 2] and keep[4, 2]
  tokens = token_keep_mask(keep, 3, (8, 8), (4, 4))  # 2x2-pixel cells: kept only when every pixel is
  assert tokens.shape == (3, 4, 4) and tokens[0].sum() == 16 - 4
  assert token_keep_mask(np.ones((2, 4, 4)), 2, (8, 8), (4, 4)).all()
  assert kept_bits_mask(3, 12) == 0b111 << 9 and kept_bits_mask([0, 11], 12) == 1 | (1 << 11)
  assert kept_bits_mask(0, 12) == 0
  known = np.zeros((6, 10), bool)
  known[1:5, 3:7] = True
  windows = outpaint_windows((6, 10), (4, 4), known)
  cover = known.copy()
  for y, x in windows:
    assert 0 <= y <= 2 and 0 <= x <= 6
    cover[y:y + 4, x:x + 4] = True
  assert cover.all() and outpaint_windows((4, 4), (4, 4), np.ones((4, 4), bool)) == []


def test_bad_masks_are_named_errors(models):
  gen, tok, images = models
  with pytest.raises(KeepMaskError, match="neither the images"):
    maskbit_jax.edit(gen, tok, images, np.ones((5, 5)), [1, 2, 3, 4], jax.random.key(0), **SETTINGS)
  with pytest.raises(KeepMaskError, match="for a batch of 4"):
    maskbit_jax.edit(gen, tok, images, np.ones((3, 4, 4)), [1, 2, 3, 4], jax.random.key(0), **SETTINGS)
  with pytest.raises(KeepMaskError, match="keep 0 to 12"):
    maskbit_jax.vary(gen, tok, images, 13, [1, 2, 3, 4], jax.random.key(0), **SETTINGS)
  with pytest.raises(KeepMaskError, match=r"outside a 12-bit token"):
    maskbit_jax.vary(gen, tok, images, [12], [1, 2, 3, 4], jax.random.key(0), **SETTINGS)
  with pytest.raises(KeepMaskError, match="box"):
    box_keep_mask((8, 8), (4, 4, 2, 6))
  with pytest.raises(ValueError, match="3 images but 2 labels"):
    maskbit_jax.edit(gen, tok, images[:3], np.ones((4, 4)), [1, 2], jax.random.key(0), **SETTINGS)
  with pytest.raises(TypeError, match="PRNG key"):
    maskbit_jax.edit(gen, tok, images, np.ones((4, 4)), [1, 2, 3, 4], 0, **SETTINGS)
  assert issubclass(KeepMaskError, ValueError)


BAR_TINY = str(REPO / "configs/bar_tiny.py")


@pytest.fixture(scope="module")
def bar_models():
  from maskbit_jax import bar

  gen = bar.load_bar_generator(BAR_TINY, random_init=True, seed=1)
  tok = bar.load_bar_tokenizer(BAR_TINY, random_init=True)
  side = gen.module.grid[0] * tok.latent_stride
  return gen, tok, np.random.default_rng(1).random((2, side, side, 3)).astype(np.float32)


def test_bar_order_limits_what_can_be_kept():
  """The orders are a function of the config and the mask only: no weights needed."""
  from maskbit_jax import bar
  from maskbit_jax.bar_config import bar_fields
  from maskbit_jax.sampling.editing import bar_orders
  from maskbit_jax.models.bar_generator import build_bar_module

  cfg = maskbit_jax.load_config(BAR_TINY)
  gen = bar.BarModel(cfg, build_bar_module(bar_fields(cfg)), None)
  (h, w), p, full = gen.module.grid, gen.module.patch_size, (1 << gen.token_bits) - 1
  steps = gen.module.num_steps
  keep = np.zeros((2, h, w), np.int32)
  keep[0, : 2 * p] = full      # two rows of steps: a raster prefix
  keep[1, :p, : 2 * p] = full  # two steps of the first row, and a partial third one
  keep[1, 0, 2 * p] = full
  np.testing.assert_array_equal(bar_orders(gen, keep), np.broadcast_to(np.arange(steps), (2, steps)))
  later = np.zeros((1, h, w), np.int32)
  later[0, -p:] = full  # kept rows below generated ones: a raster-order BAR cannot
  with pytest.raises(KeepMaskError, match="raster order"):
    bar_orders(gen, later)
  first = bar_orders(gen, later, "kept_first")[0]
  row = w // p
  assert sorted(first[:row]) == list(range(steps - row, steps)) and sorted(first) == list(range(steps))
  with pytest.raises(ValueError, match="order="):
    bar_orders(gen, later, "spiral")
  every = np.full((1, h, w), 1 << (gen.token_bits - 1), np.int32)  # vary: bits kept in every step
  np.testing.assert_array_equal(bar_orders(gen, every)[0], np.arange(steps))
  random_order = maskbit_jax.load_config(BAR_TINY, ["--config.model.generator.randomness_anneal_end=10000000"])
  gen = bar.BarModel(random_order, gen.module, None)
  assert sorted(bar_orders(gen, later)[0][:row]) == list(range(steps - row, steps))  # auto: kept first


@pytest.mark.slow
def test_bar_edit_and_vary(bar_models):
  gen, tok, images = bar_models
  h, w = gen.module.grid
  labels = [1, 2]
  source = np.asarray(tok.encode(images))
  empty = maskbit_jax.edit(gen, tok, images, np.zeros((h, w)), labels, jax.random.key(0))
  np.testing.assert_array_equal(_np(empty, "tokens"), _np(maskbit_jax.sample(gen, tok, labels, jax.random.key(0)),
                                                          "tokens"))
  keep = np.zeros((h, w), bool)
  keep[:3] = True  # a raster prefix (3 token rows: one and a half rows of 2x2 steps)
  out = _np(maskbit_jax.edit(gen, tok, images, keep, labels, jax.random.key(0)), "tokens")
  np.testing.assert_array_equal(out[:, :3], source[:, :3])
  assert (out[:, 3:] != source[:, 3:]).any()
  full = maskbit_jax.edit(gen, tok, images, np.ones((h, w)), labels, jax.random.key(0))
  np.testing.assert_array_equal(_np(full, "tokens"), source)
  later = ~keep
  out = _np(maskbit_jax.edit(gen, tok, images, later, labels, jax.random.key(0), order="kept_first"), "tokens")
  np.testing.assert_array_equal(out[:, 3:], source[:, 3:])
  mask = kept_bits_mask(gen.token_bits // 2, gen.token_bits)
  out = _np(maskbit_jax.vary(gen, tok, images, gen.token_bits // 2, labels, jax.random.key(0)), "tokens")
  np.testing.assert_array_equal(out & mask, source & mask)
  assert (out != source).mean() > 0.5


def _golden_pair_config(tmp_path, fixture_configs):
  """The golden pair as one config file (the command loads both from a config)."""
  cfg = {"model": {"vq_model": dict(fixture_configs["configs"]["tokenizer_tiny"]),
                   "mlm_model": {k: v for k, v in fixture_configs["configs"]["generator_tiny"].items()
                                 if k in ("hidden_dim", "depth", "heads", "mlp_dim", "codebook_splits", "use_prenorm",
                                          "dropout")},
                   "nclass": fixture_configs["configs"]["generator_tiny"]["nclass"]},
         "dataset": {"preprocessing": {"resolution": fixture_configs["configs"]["generator_tiny"]["img_size"]}}}
  cfg_path = tmp_path / "pair.yaml"  # JSON is YAML
  cfg_path.write_text(json.dumps(cfg))
  side = cfg["dataset"]["preprocessing"]["resolution"]
  image = tmp_path / "in.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (side + 10, side, 3), np.uint8)).save(image)
  return cfg_path, image, side


def test_edit_cli_arguments(tmp_path, fixture_configs):
  from maskbit_jax.cli.edit import main as edit_main

  cfg_path, image, _ = _golden_pair_config(tmp_path, fixture_configs)
  for bad in (["--box", "1,2,3"], [], ["--box", "0,0,8,8", "--keep_bits", "3"], ["--outpaint", "a,b,c,d"]):
    with pytest.raises(SystemExit):  # exactly one of --mask / --box / --keep_bits / --outpaint, well formed
      edit_main(["--config", str(cfg_path), "--random_init", "--image", str(image), "--classes", "3",
                 "--out", str(tmp_path / "x"), *bad])
  assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_edit_cli_writes_its_grid(tmp_path, golden, fixture_configs):
  from maskbit_jax.cli.edit import main as edit_main

  cfg_path, image, side = _golden_pair_config(tmp_path, fixture_configs)
  out = tmp_path / "e"
  assert edit_main(["--config", str(cfg_path), "--tokenizer", str(golden / "tokenizer_tiny.bin"),
                    "--generator", str(golden / "generator_tiny.bin"), "--image", str(image), "--box", "0,0,32,32",
                    "--classes", "3,5,7,9", "--num_steps", "4", "--guidance_scale", "2", "--out", str(out)]) == 0
  grid = np.asarray(Image.open(out / "grid.png"))
  assert grid.shape[1] > 6 * side  # input, mask, four outputs side by side
  assert sorted(p.name for p in out.glob("0*.png"))[:2] == ["00000_class3.png", "00001_class5.png"]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["mode"] == "edit" and summary["kept_tokens"] == summary["tokens"] - 4
  data = np.load(out / "tokens.npz")
  kept = data["fixed_bits"] != 0
  assert (data["tokens"][kept] == data["input_tokens"][kept]).all() and list(data["labels"]) == [3, 5, 7, 9]


@pytest.mark.slow
def test_edit_and_vary_on_the_main_jobs_models(tmp_path):
  """The README main job (both stages, shortened as its quick test does), then the command on its exports
  (configs from the exports): the kept tokens and bits of the trained tiny models are the input's."""
  from maskbit_jax.cli.edit import main as edit_main
  from test_readme_main_command import QUICK_STEPS, quick_override, run_main_command

  run_main_command(tmp_path, [f"{quick_override()}{QUICK_STEPS}"])
  generator = str(tmp_path / "runs/gen/export/generator")
  side = maskbit_jax.load_config(str(REPO / "configs/generator_tiny.py")).dataset.preprocessing.resolution
  image = tmp_path / "in.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), np.uint8)).save(image)
  runs = (["--box", f"0,{side // 2},{side},{side}"], ["--keep_bits", "6"])
  for i, what in enumerate(runs):
    out = tmp_path / f"e{i}"
    assert edit_main(["--generator", generator, "--tokenizer", str(tmp_path / "runs/tok/export/tokenizer"),
                      "--image", str(image), *what, "--classes", "1,2", "--out", str(out)]) == 0
    data = np.load(out / "tokens.npz")
    fixed = data["fixed_bits"]
    np.testing.assert_array_equal(data["tokens"] & fixed, data["input_tokens"] & fixed)
    assert (data["tokens"] != data["input_tokens"]).any() and (out / "grid.png").is_file()


@pytest.mark.slow
def test_bar_fsq_edit_encodes_with_the_tokenizers_encoder(golden_bar):
  """BAR on its own binary-FSQ tokenizer (the golden tiny pair): the encoder makes the kept bits."""
  import ml_collections

  from maskbit_jax import bar
  from maskbit_jax.bar_config import bar_fields
  from maskbit_jax.convert.bar_mapping import bar_state_to_flax
  from maskbit_jax.convert.checkpoint_files import read_state_dict
  from maskbit_jax.models.bar_generator import abstract_bar_params, build_bar_module

  configs = json.loads((golden_bar / "fixture_configs.json").read_text())
  name = next(k for k, v in configs.items() if k.startswith("tokenizer") and isinstance(v, dict) and "model" in v)
  cfg = json.loads(json.dumps(configs[name]))
  cfg["model"]["siglip2"] = configs[f"{name}_siglip2_vision_config"]
  cfg["model"]["vit_decoder"] = configs[f"{name}_decoder_overrides"]
  trace = next(v for k, v in configs.items() if k.startswith("sampling_"))
  gen_cfg = ml_collections.ConfigDict(configs[trace["generator"]])
  module = build_bar_module(bar_fields(gen_cfg))
  params = bar_state_to_flax(read_state_dict(golden_bar / f"{trace['generator']}.bin"),
                             nn.meta.unbox(abstract_bar_params(module)), module, source=trace["generator"])
  gen = bar.BarModel(gen_cfg, module, jax.tree.map(jnp.asarray, params))
  settings = {k: trace[k] for k in ("guidance_scale", "randomize_temperature", "tokens_allocation")}
  decode_only = bar.load_bar_tokenizer(cfg, golden_bar / f"{name}.bin")
  tok = bar.load_bar_tokenizer(cfg, golden_bar / f"{name}.bin", with_encoder=True)
  side, (h, w) = tok.module.image_size, tok.grid
  images = np.random.default_rng(0).random((2, side, side, 3)).astype(np.float32)
  keep = np.zeros((h, w), bool)
  keep[: h // 2] = True
  with pytest.raises(ValueError, match="with_encoder=True"):
    maskbit_jax.edit(gen, decode_only, images, keep, trace["labels"], jax.random.key(0), **settings)
  out = maskbit_jax.edit(gen, tok, images, keep, trace["labels"], jax.random.key(0), **settings)
  tokens, source = _np(out, "tokens"), _np(out, "input_tokens")
  np.testing.assert_array_equal(tokens[:, : h // 2], source[:, : h // 2])
  assert (tokens[:, h // 2:] != source[:, h // 2:]).any() and out["images"].shape == images.shape
  with pytest.raises(ValueError, match="fixed token grid"):
    maskbit_jax.edit.outpaint(gen, tok, images, trace["labels"], jax.random.key(0), pad=(0, 1, 0, 0), **settings)
