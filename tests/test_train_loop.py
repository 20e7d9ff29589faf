"""``python -m maskbit_jax.train`` end to end: learning, resume bit for bit, SIGTERM, bad input.

Runs use the tiny configs on the embedded synthetic data on one CPU device
(``runtime.num_devices=1``; the sharded step is tested on 8 devices in
test_train_sharding.py) with small batches and few steps.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from flax import linen as nn

import maskbit_jax
from conftest import REPO, assert_trees_equal, restored_state
from maskbit_jax import checkpointing, sharding
from maskbit_jax.data.sample_images import class_name
from maskbit_jax.data.sources import make_source
from maskbit_jax.train.loop import RunMismatchError, train

TOK = str(REPO / "configs/tokenizer_tiny.py")
GEN = str(REPO / "configs/generator_tiny.py")
ONE_DEVICE = ["--config.runtime.num_devices=1", "--config.dataset.num_threads=1"]


def tok_config(*overrides):
  return maskbit_jax.load_config(TOK, ONE_DEVICE + list(overrides))


def gen_config(tokenizer_dir, *overrides):
  return maskbit_jax.load_config(GEN, ONE_DEVICE + [f"--config.experiment.vqgan_checkpoint={tokenizer_dir}"]
                                 + list(overrides))


@pytest.fixture(scope="module")
def random_tokenizer(tmp_path_factory):
  """A random-init tiny tokenizer saved like a stage-I export (the stage-II tests' frozen tokenizer)."""
  tok = maskbit_jax.load_tokenizer(TOK, random_init=True, seed=3)
  path = tmp_path_factory.mktemp("tok") / "tokenizer"
  checkpointing.save_params(path, tok.params, kind="tokenizer", config=tok.config.to_dict())
  return str(path)


# ----------------------------------------------------------------------------------------- learning


def tb_scalars(workdir, tag):
  """The values clu wrote for ``tag`` (TF2 summaries store scalars as tensors), in step order."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tensorboard.util import tensor_util

  acc = EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  if tag in acc.Tags().get("tensors", []):
    return [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
  return [e.value for e in acc.Scalars(tag)]


def test_tokenizer_learns_on_embedded_data(tmp_path):
  """Stage I on the synthetic set: the logged reconstruction loss falls by more than half, and the
  held-out PSNR of the EMA weights rises above 14 dB (random init: about 8 dB) within 120 steps; the
  exported weights load through load_tokenizer and reconstruct as in training."""
  cfg = tok_config("--config.training.per_gpu_batch_size=8", "--config.training.max_train_steps=120",
                   "--config.losses.discriminator_start=100", "--config.experiment.log_every=20",
                   "--config.experiment.eval_every=1000", "--config.experiment.generate_every=1000",
                   "--config.experiment.save_every=1000", "--config.experiment.eval_images=32")
  work = str(tmp_path / "tok")
  summary = train(cfg, work)
  assert summary["finished"] and summary["end_step"] == 120
  losses = tb_scalars(work, "reconstruction_loss")
  assert len(losses) == 6
  assert losses[-1] < 0.5 * losses[0], losses
  assert summary["eval"]["eval_images"] == 32
  assert summary["eval"]["eval_psnr"] > 14.0, summary["eval"]
  assert os.path.isfile(summary["image_grid"])
  tok = maskbit_jax.load_tokenizer(cfg, summary["export"])
  src = make_source(cfg.dataset.eval_source, cfg.dataset.preprocessing.resolution)
  images = np.stack([src[i]["image"] for i in range(32)])
  recon = np.clip(np.asarray(tok.decode_tokens(tok.encode(images))), 0, 1)
  psnr = np.mean(10 * np.log10(1.0 / np.mean((recon - images) ** 2, axis=(1, 2, 3))))
  assert abs(psnr - summary["eval"]["eval_psnr"]) < 0.05


def test_generator_learns_on_embedded_data(tmp_path, random_tokenizer):
  """Stage II on tokens of the frozen tokenizer made inside the step: the MLM loss falls by more than
  0.6 nats in 160 steps (measured: 4.16 -> 3.15; chance level is ln 64 = 4.16)."""
  cfg = gen_config(random_tokenizer, "--config.training.per_gpu_batch_size=16",
                   "--config.training.max_train_steps=160", "--config.experiment.log_every=10",
                   "--config.lr_scheduler.params.warmup_steps=10", "--config.experiment.generate_every=160", "--config.experiment.save_every=1000",
                   "--config.training.num_generated_images=4", "--config.model.mlm_model.num_steps=4")
  work = str(tmp_path / "gen")
  summary = train(cfg, work)
  assert summary["finished"]
  losses = tb_scalars(work, "mlm_loss")
  assert len(losses) == 16
  assert losses[-1] < losses[0] - 0.6, losses
  assert os.path.isfile(summary["image_grid"])
  gen = maskbit_jax.load_generator(cfg, summary["export"])
  assert gen.nclass == 16


# ----------------------------------------------------------------------------------------- resume


def test_tokenizer_resume_is_bit_identical(tmp_path):
  """3 steps, stop, resume 3 more == 6 straight, across the discriminator switch-on at step 3."""
  common = ["--config.training.per_gpu_batch_size=4", "--config.training.max_train_steps=6",
            "--config.losses.discriminator_start=3", "--config.experiment.log_every=1",
            "--config.experiment.eval_every=1000", "--config.experiment.generate_every=1000",
            "--config.experiment.save_every=1000"]
  split, straight = str(tmp_path / "split"), str(tmp_path / "straight")
  first = train(tok_config(*common), split, num_steps=3)
  assert first["end_step"] == 3 and not first["finished"]
  second = train(tok_config(*common), split)
  assert second["start_step"] == 3 and second["end_step"] == 6
  train(tok_config(*common), straight)
  step_a, a, meta_a = restored_state(split)
  step_b, b, meta_b = restored_state(straight)
  assert step_a == step_b == 6
  assert meta_a["data"] == meta_b["data"]
  assert_trees_equal(a, b)
  assert int(np.asarray(a["disc_opt_state"][1][0]["count"] if isinstance(a["disc_opt_state"][1][0], dict)
                        else a["disc_opt_state"][1][0].count)) == 3  # the discriminator trained on steps 3..5 only


def test_generator_resume_is_bit_identical(tmp_path, random_tokenizer):
  common = ["--config.training.per_gpu_batch_size=8", "--config.training.max_train_steps=4",
            "--config.experiment.log_every=1", "--config.experiment.generate_every=1000",
            "--config.experiment.save_every=1000"]
  split, straight = str(tmp_path / "split"), str(tmp_path / "straight")
  train(gen_config(random_tokenizer, *common), split, num_steps=2)
  train(gen_config(random_tokenizer, *common), split)
  train(gen_config(random_tokenizer, *common), straight)
  _, a, _ = restored_state(split)
  _, b, _ = restored_state(straight)
  assert_trees_equal(a, b)


def test_without_ema_the_trained_weights_are_shown_and_exported(tmp_path, random_tokenizer):
  """training.use_ema=False: sample grids and exports use the trained weights, not the untouched EMA copy."""
  from maskbit_jax.generator import Generator
  from maskbit_jax.train.tasks import make_task

  cfg = gen_config(random_tokenizer, "--config.training.use_ema=False", "--config.training.per_gpu_batch_size=8",
                   "--config.training.num_generated_images=4")
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  task = make_task(cfg, mesh, str(tmp_path))
  state, data = task.init_state(), iter(task.dataset())
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    for i in range(3):
      state, _ = task.step(state, task.to_device(next(data)), i)
  trained, untouched = jax.device_get(state.params), jax.device_get(state.ema_params)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(untouched)))
  shown = []
  real_grid = task.sample_grid
  task.sample_grid = lambda gen, n: shown.append(gen.params) or real_grid(gen, n)
  images, labels = task.visualize(state)[:2]
  assert_trees_equal(shown[0], trained)  # (3 steps barely move the samples, so the weights are compared)
  expected = real_grid(Generator(task.cfg, task.module, trained), task.module.nclass).images_bhwc
  np.testing.assert_array_equal(images, expected)
  # every class of the synthetic set once, captioned by its name
  assert len(expected) == max(task.grid_samples, task.module.nclass)
  assert labels == [class_name(c) for c in np.arange(len(expected)) % task.module.nclass]
  exported = maskbit_jax.load_generator(task.cfg, task.export(state))
  assert_trees_equal(exported.params, trained)


# A child is given up on only when it has printed nothing for this long (stuck, not slow: on a loaded
# 2-core machine compiling the first step alone takes minutes).
STALL_S = 900


def lines_while_progressing(proc: subprocess.Popen, stall_s: float = STALL_S):
  """The lines ``proc`` prints, to its end; kills it and fails the test if it prints nothing for ``stall_s``."""
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put(None)], daemon=True).start()
  while True:
    try:
      line = lines.get(timeout=stall_s)
    except queue.Empty:
      proc.kill()
      pytest.fail(f"{proc.args[:4]}... printed nothing for {stall_s:.0f} s")
    if line is None:
      return
    yield line


def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
  from maskbit_jax.train.preemption import EXIT_PREEMPTED

  work = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "maskbit_jax.train", "--config", TOK, "--workdir", work, *ONE_DEVICE,
         "--config.training.per_gpu_batch_size=2", "--config.training.max_train_steps=100000",
         "--config.experiment.log_every=1", "--config.experiment.save_every=100000",
         "--config.experiment.generate_every=100000", "--config.experiment.eval_every=100000"]
  env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
  lines, signalled = [], False
  for line in lines_while_progressing(proc):
    lines.append(line)
    if "[tokenizer] step 3/" in line and not signalled:
      proc.send_signal(signal.SIGTERM)
      signalled = True
  proc.wait()
  text = "".join(lines)
  assert proc.returncode == EXIT_PREEMPTED, text[-3000:]  # saved, not finished: a scheduler requeues
  assert "received SIGTERM" in text and "checkpoint saved" in text
  step, state, meta = restored_state(work)
  assert step >= 3 and int(np.asarray(state["step"])) == step
  assert meta["data"]["next_index"] == step * 2
  # the next start resumes from it
  summary = train(tok_config("--config.training.per_gpu_batch_size=2", "--config.training.max_train_steps=100000",
                             "--config.experiment.log_every=1", "--config.experiment.save_every=100000",
                             "--config.experiment.generate_every=100000", "--config.experiment.eval_every=100000"),
                  work, num_steps=1)
  assert summary["start_step"] == step and summary["end_step"] == step + 1


# ----------------------------------------------------------------------------------------- bad input


def test_unknown_config_key_is_an_error():
  with pytest.raises(KeyError, match="trainig"):
    tok_config("--config.trainig.max_train_steps=3")
  with pytest.raises(KeyError, match="per_gpu_batchsize"):
    tok_config("--config.training.per_gpu_batchsize=3")


@pytest.mark.parametrize("override, message", [
    ("--config.model.vq_model.token_size=32", "token_size=32"),
    ("--config.training.per_gpu_batch_size=0", "per_gpu_batch_size must be >= 1"),
    ("--config.losses.discriminator_loss=wasserstein", "discriminator_loss"),
    ("--config.dataset.preprocessing.min_scale=1.5", "min_scale"),
    ("--config.runtime.num_devices=99", "num_devices"),
    ("--config.dataset.corrupt_images=ignore", "corrupt_images"),
])
def test_out_of_range_values_are_errors(tmp_path, override, message):
  with pytest.raises(ValueError, match=message):
    train(tok_config(override), str(tmp_path / "w"))


def test_batch_must_divide_over_the_data_axis(tmp_path):
  cfg = maskbit_jax.load_config(TOK, ["--config.training.global_batch_size=6"])  # all 8 simulated devices
  with pytest.raises(ValueError, match="global batch 6 is not divisible by the 8 devices"):
    train(cfg, str(tmp_path / "w"))


def test_splits_must_divide_the_bits(tmp_path, random_tokenizer):
  with pytest.raises(ValueError, match="codebook_splits=5 must divide"):
    train(gen_config(random_tokenizer, "--config.model.mlm_model.codebook_splits=5"), str(tmp_path / "w"))


def test_empty_dataset_folder_is_an_error(tmp_path):
  (tmp_path / "data" / "cats").mkdir(parents=True)
  with pytest.raises(ValueError, match="no images"):
    train(tok_config(f"--config.dataset.source={tmp_path / 'data'}"), str(tmp_path / "w"))


def _folder_with_corrupt_image(root):
  from PIL import Image

  for cls in ("a", "b"):
    (root / cls).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(root / cls / f"{i}.png")
  (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  return root


def test_corrupt_image_raises_or_is_skipped_and_counted(tmp_path, caplog):
  from maskbit_jax.data import pipeline
  from maskbit_jax.data.sources import CorruptImageError, make_source

  source = make_source(str(_folder_with_corrupt_image(tmp_path / "data")), 32)
  ds = pipeline.image_train_dataset(source, size=32, batch_size=7, seed=0, num_threads=1)
  with pytest.raises(CorruptImageError, match="broken.png"):
    next(iter(ds))
  counter = pipeline.CorruptCounter()
  ds = pipeline.image_train_dataset(source, size=32, batch_size=6, seed=0, num_threads=1, corrupt_images="skip",
                                    counter=counter)
  it = iter(ds)
  batches = [next(it) for _ in range(3)]  # 6 good images per epoch: 3 epochs, the broken one skipped each time
  assert all(b["image"].shape == (6, 32, 32, 3) for b in batches)
  assert counter.skipped == 3
  assert "skipping corrupt image" in caplog.text


def test_all_corrupt_folder_with_skip_is_an_error(tmp_path):
  from maskbit_jax.data import pipeline
  from maskbit_jax.data.sources import CorruptImageError, make_source

  (tmp_path / "d").mkdir()
  for i in range(3):
    (tmp_path / "d" / f"{i}.jpg").write_bytes(b"garbage")
  ds = pipeline.image_train_dataset(make_source(str(tmp_path / "d"), 32), size=32, batch_size=2, seed=0,
                                    num_threads=1, corrupt_images="skip")
  with pytest.raises(CorruptImageError, match="in a row"):
    next(iter(ds))


def test_workdir_of_another_config_is_refused_and_left_intact(tmp_path):
  common = ["--config.training.per_gpu_batch_size=2", "--config.training.max_train_steps=2",
            "--config.experiment.generate_every=1000", "--config.experiment.eval_every=1000"]
  work = str(tmp_path / "w")
  train(tok_config(*common), work)
  before = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, fs in os.walk(work) for p in fs}
  with pytest.raises(RunMismatchError, match="model.vq_model.hidden_channels: 32 -> 64"):
    train(tok_config(*common, "--config.model.vq_model.hidden_channels=64"), work)
  after = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, fs in os.walk(work) for p in fs}
  assert before == after
  # cadence and length may change between restarts
  summary = train(tok_config(*common, "--config.experiment.log_every=7"), work)
  assert summary["start_step"] == 2


def test_a_start_that_failed_before_its_first_checkpoint_does_not_lock_the_workdir(tmp_path):
  common = ["--config.training.per_gpu_batch_size=2", "--config.training.max_train_steps=1",
            "--config.experiment.generate_every=1000", "--config.experiment.eval_every=1000"]
  work = str(tmp_path / "w")
  with pytest.raises(FileNotFoundError, match="nofolder"):
    train(tok_config(*common, f"--config.dataset.source={tmp_path / 'nofolder'}"), work)
  assert os.path.exists(os.path.join(work, "config.json"))  # written, but no checkpoint: nothing locked
  summary = train(tok_config(*common), work)  # the corrected command runs
  assert summary["end_step"] == 1
  for steps in (0, -3):
    with pytest.raises(ValueError, match=r"--steps\) = %d: must be >= 1" % steps):
      train(tok_config(*common), work, num_steps=steps)
