"""BAR-FSQ tokenizer training through ``python -m maskbit_jax.train`` (stage ``bar_fsq``).

The tiny config (``configs/bar_fsq_tiny.py``) on the embedded synthetic data on one CPU device; the
discriminator cases use the tiny DINO backbone of the parity fixtures (``tests/data/bar_fsq``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, assert_trees_equal, restored_state
from test_train_loop import lines_while_progressing, tb_scalars

import maskbit_jax
from maskbit_jax import bar
from maskbit_jax.data.sources import make_source
from maskbit_jax.train.loop import train
from maskbit_jax.train.tasks import stage_of

TINY = str(REPO / "configs/bar_fsq_tiny.py")
ONE_DEVICE = ["--config.runtime.num_devices=1", "--config.dataset.num_threads=1"]
QUIET = ["--config.experiment.eval_every=100000", "--config.experiment.generate_every=100000",
         "--config.experiment.save_every=100000", "--config.experiment.eval_images=0"]


def tiny_config(*overrides):
  return maskbit_jax.load_config(TINY, ONE_DEVICE + list(overrides))


def with_discriminator(start: int, folder) -> list[str]:
  """The fixtures' tiny DINO backbone (width 16, depth 4, readouts after blocks 1 and 3, patch 8: the
  reference reads the patch size off the file name) as D's backbone."""
  dino = os.path.join(folder, "dino_tiny_patch8.npz")
  if not os.path.exists(dino):
    shutil.copy(REPO / "tests" / "data" / "bar_fsq" / "dino_backbone.npz", dino)
  return [f"--config.model.discriminator.dino_ckpt_path={dino}", f"--config.losses.discriminator_start={start}",
          "--config.model.discriminator.width=16", "--config.model.discriminator.num_heads=2",
          "--config.model.discriminator.depth=4", "--config.model.discriminator.key_depths=(1,3)"]


def test_stage_and_phases():
  from maskbit_jax.train.bar_fsq_step import BarFsqStep

  assert stage_of(maskbit_jax.load_config(str(REPO / "configs/bar_fsq_16bits.py"))) == "bar_fsq"
  assert stage_of(tiny_config()) == "bar_fsq"
  spec = BarFsqStep(model=None, disc=object(), settings=_settings(start=3), tx=None, disc_tx=None,
                    perceptual_fn=None)
  assert [spec.phase(s) for s in range(7)] == ["generator"] * 3 + ["generator_gan", "discriminator"] * 2


def _settings(start):
  from maskbit_jax.losses.bar_fsq_loss import BarFsqLossSettings

  return BarFsqLossSettings.from_config(tiny_config(f"--config.losses.discriminator_start={start}").losses)


def test_released_config_names_the_missing_frozen_network(tmp_path):
  """The released recipe needs its frozen networks' files; without them the run stops before building
  anything heavy, with one line naming the key."""
  cfg = maskbit_jax.load_config(str(REPO / "configs/bar_fsq_16bits.py"), ONE_DEVICE + [
      "--config.dataset.source=synthetic:64", "--config.training.per_gpu_batch_size=1"])
  with pytest.raises(ValueError, match=r"^losses\.lpips_checkpoint is not set") as err:
    train(cfg, str(tmp_path / "w"))
  assert "\n" not in str(err.value)


@pytest.mark.slow  # about 2-3 minutes on 2 CPU cores
def test_tiny_tokenizer_learns_and_exports(tmp_path):
  """The tiny config as shipped (200 steps): the logged total loss falls by more than 70 % and the
  held-out PSNR of the EMA weights exceeds 17 dB; the export loads with load_bar_tokenizer (encoder
  included, as pretokenize takes it) and its bits decode to the same reconstructions."""
  cfg = tiny_config("--config.experiment.eval_images=32")
  work = str(tmp_path / "run")
  summary = train(cfg, work)
  assert summary["finished"] and summary["end_step"] == 200
  losses = tb_scalars(work, "total_loss")
  assert losses[-1] < 0.3 * losses[0], losses
  assert summary["eval"]["eval_psnr"] > 17.0, summary["eval"]
  assert os.path.isfile(summary["image_grid"])
  tok = bar.load_bar_tokenizer(cfg, summary["export"], with_encoder=True)
  src = make_source(cfg.dataset.eval_source, 32)
  images = np.stack([src[i]["image"] for i in range(32)])
  bits = tok.module.apply({"params": tok.params}, images * 2.0 - 1.0, method="encode_bits")
  assert bits.shape == (32, 16, 12)
  recon = np.clip((np.asarray(tok.decode_bits(bits)) + 1.0) / 2.0, 0.0, 1.0)
  psnr = np.mean(10 * np.log10(1.0 / np.mean((recon - images) ** 2, axis=(1, 2, 3))))
  assert abs(psnr - summary["eval"]["eval_psnr"]) < 0.05


@pytest.mark.slow  # minutes on 2 CPU cores: three short runs, each compiling three phase programs
def test_resume_is_bit_identical_across_the_discriminator_phases(tmp_path):
  """2 + 3 steps == 5 straight with the discriminator from step 1 (phases g, gan, d, gan, d): the stop
  falls after a GAN step, so the resumed run must start with a discriminator step."""
  common = ["--config.training.per_gpu_batch_size=2", "--config.training.max_train_steps=5",
            "--config.experiment.log_every=1", *QUIET, *with_discriminator(1, tmp_path)]
  split, straight = str(tmp_path / "split"), str(tmp_path / "straight")
  first = train(tiny_config(*common), split, num_steps=2)
  assert first["end_step"] == 2 and not first["finished"]
  second = train(tiny_config(*common), split)
  assert second["start_step"] == 2 and second["end_step"] == 5
  train(tiny_config(*common), straight)
  step_a, a, meta_a = restored_state(split)
  step_b, b, meta_b = restored_state(straight)
  assert step_a == step_b == 5 and meta_a["data"] == meta_b["data"]
  assert_trees_equal(a, b)
  # the discriminator trained on steps 2 and 4 only: its optimizer counted 2 updates, the generator's 3
  counts = [int(np.asarray(x)) for x in jax.tree.leaves(a["disc_opt_state"]) if np.asarray(x).dtype == np.int32]
  assert counts and set(counts) == {2}, counts
  losses = tb_scalars(straight, "discriminator_loss")
  assert [v != 0.0 for v in losses] == [False, False, True, False, True], losses


@pytest.mark.slow  # about a minute
def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
  from maskbit_jax.train.preemption import EXIT_PREEMPTED

  work = str(tmp_path / "run")
  flags = ["--config.training.per_gpu_batch_size=2", "--config.training.max_train_steps=100000",
           "--config.experiment.log_every=1", *QUIET]
  cmd = [sys.executable, "-m", "maskbit_jax.train", "--config", TINY, "--workdir", work, *ONE_DEVICE, *flags]
  env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
  lines, signalled = [], False
  for line in lines_while_progressing(proc):
    lines.append(line)
    if "[bar_fsq] step 3/" in line and not signalled:
      proc.send_signal(signal.SIGTERM)
      signalled = True
  proc.wait()
  text = "".join(lines)
  assert proc.returncode == EXIT_PREEMPTED, text[-3000:]
  assert "received SIGTERM" in text and "checkpoint saved" in text
  step, state, meta = restored_state(work)
  assert step >= 3 and int(np.asarray(state["step"])) == step
  summary = train(tiny_config(*flags), work, num_steps=1)
  assert summary["start_step"] == step and summary["end_step"] == step + 1
