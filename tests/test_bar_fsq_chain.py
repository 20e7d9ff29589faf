"""The BAR-FSQ chain on CPU: the tiny binary-FSQ tokenizer trained by the shared loop and exported
(``configs/bar_fsq_tiny.py``, a few steps) -> ``python -m maskbit_jax.pretokenize`` on the export -> BAR
(``configs/bar_tiny.py`` put on that tokenizer's grid and bits) training on the written bits."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import REPO
from flax import linen as nn

import maskbit_jax
from maskbit_jax import bar, sharding
from maskbit_jax.data.sources import AdmCropSource, SyntheticSource
from maskbit_jax.cli.pretokenize import main as pretokenize_main
from maskbit_jax.data.token_dataset import TokenDataset
from maskbit_jax.train.bar_task import BarTask
from maskbit_jax.train.loop import train
from maskbit_jax.train.tasks import make_task

NUM_IMAGES = 16
ONE_DEVICE = ["--config.runtime.num_devices=1", "--config.dataset.num_threads=1"]


def _bar_config_on(tok_cfg, export: str, folder) -> str:
  """``configs/bar_tiny.py`` on the FSQ tokenizer ``tok_cfg`` / ``export``: its model sections, image size
  and grid, one token an AR step, four inner steps summing to its bits. Written as a config file."""
  cfg = maskbit_jax.load_config(str(REPO / "configs/bar_tiny.py")).to_dict()
  tok = tok_cfg.to_dict()
  for key in ("vq_model", "siglip2", "vit_decoder"):
    cfg["model"][key] = tok["model"][key]
  size = int(tok["dataset"]["preprocessing"]["crop_size"])
  bits = int(tok["model"]["vq_model"]["token_size"])
  grid = size // int(tok["model"]["vq_model"]["vit_dec_patch_size"])
  cfg["dataset"]["preprocessing"].update(crop_size=size, resolution=size)
  gen = cfg["model"]["generator"]
  gen["image_seq_len"], gen["patch_size"] = grid * grid, 1
  allocation = [bits // 4 + (i >= 4 - bits % 4) for i in range(4)]
  gen["mbm_head"]["tokens_allocation"] = cfg["sampling"]["tokens_allocation"] = allocation
  cfg["experiment"]["tokenizer_checkpoint"] = export
  path = folder / "bar_on_fsq_tiny.py"
  path.write_text(f"def get_config():\n  return {cfg!r}\n")
  return str(path)


@pytest.mark.slow  # about 3 minutes on 2 loaded cores: three programs compile (tokenizer step, encoder, BAR step)
def test_trained_fsq_tokenizer_to_pretokenize_to_bar(tmp_path):
  tok_cfg = maskbit_jax.load_config(str(REPO / "configs/bar_fsq_tiny.py"), ONE_DEVICE + [
      "--config.training.per_gpu_batch_size=4", "--config.training.max_train_steps=3",
      "--config.experiment.eval_images=0", "--config.experiment.generate_every=100000"])
  summary = train(tok_cfg, str(tmp_path / "tok"))
  assert summary["finished"] and summary["export"]
  config = _bar_config_on(tok_cfg, summary["export"], tmp_path)

  out = str(tmp_path / "bits")
  assert pretokenize_main(["--config", config, "--data", f"synthetic:{NUM_IMAGES}", "--batch_size", "8",
                           "--out", out, "--num_threads", "1"]) == 0
  # the written bits are the exported tokenizer's encode_bits of the same (ADM-cropped) images and flips
  tok = bar.load_bar_tokenizer(config, with_encoder=True)
  assert isinstance(tok, bar.BarFsqTokenizer)
  size = tok.module.image_size
  src = AdmCropSource(SyntheticSource(NUM_IMAGES, size), size)
  images = np.stack([src[i]["image"] for i in range(NUM_IMAGES)])
  encode = lambda x: np.asarray(tok.module.apply({"params": tok.params}, x * 2.0 - 1.0, method="encode_bits"))
  records = [TokenDataset(out)[i] for i in range(NUM_IMAGES)]
  bits = np.stack([r["bits"] for r in records])
  np.testing.assert_array_equal(bits, encode(images))
  np.testing.assert_array_equal(np.stack([r["bits_flipped"] for r in records]), encode(images[:, :, ::-1]))
  assert 0.05 < bits.mean() < 0.95, bits.mean()  # the tiny recipe's bits vary from the first steps

  # BAR trains on them: finite losses that fall over a few steps on this small set
  cfg = maskbit_jax.load_config(config, ONE_DEVICE + [f"--config.dataset.pretokenized={out}",
                                                      "--config.training.global_batch_size=8"])
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  task = make_task(cfg, mesh, str(tmp_path / "bar"))
  assert isinstance(task, BarTask) and task.kind == bar.BAR_FSQ
  data = iter(task.dataset())
  state, losses = task.init_state(), []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    for i in range(12):
      state, metrics = task.step(state, task.to_device(next(data)), i)
      losses.append(float(metrics["mbm_loss"]))
  assert np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
