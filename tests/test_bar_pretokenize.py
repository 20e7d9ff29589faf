"""BAR on BAR's binary-FSQ tokenizer, from images to training: ``python -m maskbit_jax.pretokenize`` writes the
bits of every image and its flip (equal to the encoder's on the fly), and the BAR task trains on that set.

The tokenizer is the golden_bar fixture's tiny one (``MASKBIT_GOLDEN_BAR``: its config, image size and bit
width come from ``fixture_configs.json``); the generator is ``configs/bar_tiny.py`` resized to its grid.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import linen as nn

import maskbit_jax
from conftest import REPO, bar_tokenizer_config, task_on_token_set
from maskbit_jax import bar, sharding
from maskbit_jax.data.sources import AdmCropSource, SyntheticSource
from maskbit_jax.models.bar_fsq import SHIFT
from maskbit_jax.cli.pretokenize import main as pretokenize_main
from maskbit_jax.data.pretokenize import pretokenize
from maskbit_jax.data.token_dataset import TokenDataset
from maskbit_jax.train.bar_task import BarTask
from maskbit_jax.train.tasks import make_task

NUM_IMAGES = 11  # not a multiple of the batch: the last batch is padded and its padding never written


def _tokenizer_name(configs: dict) -> str:
  names = [k[: -len("_siglip2_vision_config")] for k in configs if k.endswith("_siglip2_vision_config")]
  if not names:
    pytest.skip("no BAR tokenizer in the fixture set")
  return names[0]


@pytest.fixture(scope="module")
def fsq_setup(golden_bar, tmp_path_factory):
  """(config file of a tiny BAR on the fixture's FSQ tokenizer, the tokenizer, its image size)."""
  configs = json.loads((golden_bar / "fixture_configs.json").read_text())
  name = _tokenizer_name(configs)
  tok_cfg = bar_tokenizer_config(configs, name)
  cfg = maskbit_jax.load_config(str(REPO / "configs/bar_tiny.py")).to_dict()
  cfg["model"]["vq_model"] = tok_cfg["model"]["vq_model"]
  cfg["model"]["siglip2"], cfg["model"]["vit_decoder"] = tok_cfg["model"]["siglip2"], tok_cfg["model"]["vit_decoder"]
  size = int(tok_cfg["dataset"]["preprocessing"]["crop_size"])
  bits = int(tok_cfg["model"]["vq_model"]["token_size"])
  grid = size // int(tok_cfg["model"]["vq_model"]["vit_dec_patch_size"])
  cfg["dataset"]["preprocessing"].update(crop_size=size, resolution=size)
  gen = cfg["model"]["generator"]
  gen["image_seq_len"] = grid * grid
  gen["patch_size"] = 1  # one FSQ token an AR step (bar_tiny's 2x2 patches are of its own 8x8 grid)
  allocation = [bits // 4 + (i >= 4 - bits % 4) for i in range(4)]  # four inner steps summing to the bits
  gen["mbm_head"]["tokens_allocation"] = cfg["sampling"]["tokens_allocation"] = allocation
  cfg["experiment"]["tokenizer_checkpoint"] = str(golden_bar / f"{name}.bin")
  path = tmp_path_factory.mktemp("cfg") / "bar_fsq_tiny.py"
  path.write_text(f"def get_config():\n  return {cfg!r}\n")
  tok = bar.load_bar_tokenizer(str(path), with_encoder=True)
  assert isinstance(tok, bar.BarFsqTokenizer) and tok.token_bits == bits
  return str(path), tok, size


def _varied(tok):
  """``tok`` with its ``in_proj`` bias moved by the FSQ shift: the sign threshold (at -3.8 for the seeded
  weights, above every pre-quantiser value of the fixture, so all bits are 1) moves to 0 and the bits vary."""
  params = jax.tree_util.tree_map(lambda x: x, tok.params)
  quant = dict(params["quantize"])
  quant["in_proj"] = dict(quant["in_proj"], bias=quant["in_proj"]["bias"] - SHIFT)
  return dataclasses.replace(tok, params=dict(params, quantize=quant))


@pytest.fixture(scope="module")
def token_set(fsq_setup, tmp_path_factory):
  """A set written by the CLI from the released-format ``.bin``: (folder, CLI arguments)."""
  config = fsq_setup[0]
  out = tmp_path_factory.mktemp("tokens") / "bits"
  args = ["--config", config, "--data", f"synthetic:{NUM_IMAGES}", "--batch_size", "8", "--out", str(out)]
  assert pretokenize_main(args) == 0
  return str(out), args


def _on_the_fly(tok, images01):
  encode = lambda x: np.asarray(tok.module.apply({"params": tok.params}, x * 2.0 - 1.0, method="encode_bits"))
  return encode(images01), encode(images01[:, :, ::-1])


def _check_set(out, tok, src):
  ds = TokenDataset(out)
  assert len(ds) == NUM_IMAGES
  assert ds.meta["field"] == "bits" and ds.meta["tokenizer"] == "bar_fsq"
  assert ds.meta["token_grid"] == list(tok.grid) and ds.meta["token_bits"] == tok.token_bits
  expected, expected_flipped = _on_the_fly(tok, np.stack([src[i]["image"] for i in range(NUM_IMAGES)]))
  got = [ds[i] for i in range(NUM_IMAGES)]
  assert [int(r["index"]) for r in got] == list(range(NUM_IMAGES))
  bits, flipped = np.stack([r["bits"] for r in got]), np.stack([r["bits_flipped"] for r in got])
  assert bits.dtype == np.uint8 and bits.shape == (NUM_IMAGES, tok.grid[0] * tok.grid[1], tok.token_bits)
  np.testing.assert_array_equal(bits, expected)
  np.testing.assert_array_equal(flipped, expected_flipped)
  np.testing.assert_array_equal([int(r["label"]) for r in got], [src[i]["label"] for i in range(NUM_IMAGES)])
  return bits, flipped


def test_cli_writes_the_encoders_bits(fsq_setup, token_set):
  _, tok, size = fsq_setup
  _check_set(token_set[0], tok, AdmCropSource(SyntheticSource(NUM_IMAGES, size), size))  # BAR's crop by default
  assert TokenDataset(token_set[0]).meta["crop"] == "adm"


def test_pretokenized_bits_equal_the_encoder_on_the_fly(fsq_setup, tmp_path):
  """With bits that vary (see ``_varied``): every image's and every flip's bits, in order, exactly."""
  _, tok, size = fsq_setup
  tok = _varied(tok)
  meta = pretokenize(tok, SyntheticSource(NUM_IMAGES, size), str(tmp_path / "bits"), batch_size=8)
  assert meta["num_images"] == NUM_IMAGES
  bits, flipped = _check_set(str(tmp_path / "bits"), tok, SyntheticSource(NUM_IMAGES, size))
  assert 0.1 < bits.mean() < 0.9  # the comparison above is not between constant arrays
  assert np.any(bits != flipped)  # the flip is really another image


def test_resumes_refuses_other_arguments_and_checks_the_size(fsq_setup, token_set):
  out, args = token_set
  assert pretokenize_main(args) == 0  # the same arguments: the finished set is resumed, nothing rewritten
  with pytest.raises(FileExistsError, match="crop was 'adm', this run has 'center'"):
    pretokenize_main([*args, "--crop", "center"])
  assert len(TokenDataset(out)) == NUM_IMAGES  # the refused run left the set intact
  config, _, size = fsq_setup
  with pytest.raises(ValueError, match=f"encodes {size} px"):
    pretokenize_main(["--config", config, "--data", "synthetic:2", "--size", str(size * 2), "--out", out + "_2x"])


def test_bar_trains_on_the_pretokenized_bits(fsq_setup, token_set, tmp_path):
  config, tok, _ = fsq_setup
  cfg = maskbit_jax.load_config(config, [f"--config.dataset.pretokenized={token_set[0]}",
                                         "--config.training.global_batch_size=8", "--config.runtime.num_devices=1",
                                         "--config.dataset.num_threads=1"])
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  task = make_task(cfg, mesh, str(tmp_path))
  assert isinstance(task, BarTask) and task.kind == bar.BAR_FSQ
  data = iter(task.dataset())
  batch = next(data)
  assert batch["bits"].shape == (8, tok.grid[0] * tok.grid[1] * tok.token_bits)
  records = [TokenDataset(token_set[0])[i] for i in range(NUM_IMAGES)]
  options = {r["bits"].reshape(-1).tobytes() for r in records} | {r["bits_flipped"].reshape(-1).tobytes() for r in records}
  assert all(row.tobytes() in options for row in batch["bits"])  # every row is an image's bits or its flip's
  state = task.init_state()
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    for i in range(3):
      state, metrics = task.step(state, task.to_device(batch if i == 0 else next(data)), i)
      losses.append(float(metrics["mbm_loss"]))
  assert np.all(np.isfinite(losses)) and int(state.step) == 3
  images = task.visualize(state).images_bhwc  # samples decode with the FSQ tokenizer's decoder
  assert np.all(np.isfinite(images))


def test_a_token_set_of_another_tokenizer_is_refused(fsq_setup, token_set, tmp_path):
  """The FSQ bits fed to BAR on MaskBit's 12-bit LFQ tokens: refused by name before any step."""
  task = task_on_token_set("bar_tiny.py", token_set[0], tmp_path)
  with pytest.raises(ValueError, match="holds bar_fsq tokens but this config's tokenizer is maskbit"):
    task.dataset()
