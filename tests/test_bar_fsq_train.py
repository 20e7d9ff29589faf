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
          "--config.loss_networks.dino.width=16", "--config.loss_networks.dino.num_heads=2",
          "--config.loss_networks.dino.depth=4", "--config.loss_networks.dino.key_depths=(1,3)"]


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
  with pytest.raises(ValueError, match=r"^loss_networks\.lpips_checkpoint is not set") as err:
    train(cfg, str(tmp_path / "w"))
  assert "\n" not in str(err.value)


@pytest.mark.slow  # about 2-3 minutes on 2 CPU cores
def test_tiny_tokenizer_learns_and_exports(tmp_path):
  """The tiny config as shipped (200 steps): the logged total loss falls by more than 70 % (measured
  0.61 -> 0.14) and the held-out PSNR of the EMA weights exceeds 18 dB (measured 18.91 on these 32
  images, 19.2 on 256; the mean image scores 16.4 on 64), so the bits carry the image, not only its mean; the
  export loads with load_bar_tokenizer (encoder included, as pretokenize takes it) and its bits decode
  to the same reconstructions.

  Without the tiny config's start (a fresh SigLIP2 tower's embeddings, the FSQ bias on the threshold;
  configs/bar_fsq_tiny.py) the same run stays at the mean image (16.2 dB on 256)."""
  cfg = tiny_config("--config.experiment.eval_images=32")
  work = str(tmp_path / "run")
  summary = train(cfg, work)
  assert summary["finished"] and summary["end_step"] == 200
  losses = tb_scalars(work, "total_loss")
  assert losses[-1] < 0.3 * losses[0], losses
  assert summary["eval"]["eval_psnr"] > 18.0, summary["eval"]
  assert os.path.isfile(summary["image_grid"])
  tok = bar.load_bar_tokenizer(cfg, summary["export"], with_encoder=True)
  src = make_source(cfg.dataset.eval_source, int(cfg.dataset.preprocessing.crop_size))
  images = np.stack([src[i]["image"] for i in range(32)])
  bits = tok.module.apply({"params": tok.params}, images * 2.0 - 1.0, method="encode_bits")
  assert bits.shape == (32, 16, 12)  # 4x4 tokens of 12 bits
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


def _sharded_task(overrides, tmp_path):
  from maskbit_jax.train.bar_fsq_task import BarFsqTask
  from maskbit_jax.train.loop import make_mesh

  cfg = maskbit_jax.load_config(TINY, ["--config.training.global_batch_size=8", "--config.training.max_train_steps=10",
                                       *with_discriminator(0, tmp_path), *overrides])
  mesh = make_mesh(cfg)
  return BarFsqTask(cfg, mesh, str(tmp_path)), mesh


@pytest.mark.slow  # minutes: two meshes x two phase programs
def test_eight_devices_follow_the_rules_and_equal_one(tmp_path):
  """data=2 x fsdp=4: params and Adam moments sharded as the rules table says; a generator+GAN step and a
  discriminator step compute what one device computes."""
  import optax
  from conftest import expected_spec
  from flax import linen as nn

  from maskbit_jax.models.bar_tokenizer import abstract_bar_tokenizer_params

  src = make_source("synthetic:8", int(tiny_config().dataset.preprocessing.crop_size))
  batch = {"image": np.stack([src[i]["image"] for i in range(8)]), "label": np.arange(8, dtype=np.int32)}
  results = []
  for overrides in (["--config.runtime.num_devices=1"], ["--config.runtime.mesh.data=2",
                                                         "--config.runtime.mesh.fsdp=4"]):
    task, mesh = _sharded_task(overrides, tmp_path)
    with jax.set_mesh(mesh):
      state = task.init_state()
      if mesh.devices.size == 8:
        boxed = jax.tree.leaves(abstract_bar_tokenizer_params(task.model),
                                is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState)][0]
        for box, p, m in zip(boxed, jax.tree.leaves(state.params), jax.tree.leaves(adam.mu)):
          got = tuple(p.sharding.spec) + (None,) * (p.ndim - len(p.sharding.spec))
          assert got == expected_spec(box.names, p.shape, mesh), (box.names, p.shape, got)
          assert m.sharding == p.sharding
        assert any("fsdp" in tuple(p.sharding.spec) for p in jax.tree.leaves(state.params))
      metrics = []
      for step in (0, 1):  # generator + GAN, then discriminator
        state, m = task.step(state, task.to_device(batch), step)
        metrics.append(jax.device_get(m))
    results.append((jax.device_get(state), metrics))
  (s1, m1), (s8, m8) = results
  for a, b in zip(m8, m1):
    for key in ("total_loss", "gan_loss", "discriminator_loss", "logits_real", "logits_fake"):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  jax.tree.map(close, s8.params, s1.params)
  jax.tree.map(close, s8.disc_params, s1.disc_params)
  jax.tree.map(close, s8.disc_spectral, s1.disc_spectral)


@pytest.mark.slow  # 80 CPU-s: two tasks, three step programs
def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
  """``training.gradient_accumulation_steps=2`` over micro-batches of 4 makes the optimizer step one batch
  of 8 makes (the reference's Accelerate accumulation: mean gradient, clipped once, one update, one EMA
  move): the logged terms, Adam's moments (linear in the clipped gradient), params and EMA agree within
  float tolerance, and both optimizers count one step."""
  import optax

  from maskbit_jax.train.bar_fsq_task import BarFsqTask
  from maskbit_jax.train.loop import make_mesh

  src = make_source("synthetic:8", int(tiny_config().dataset.preprocessing.crop_size))
  batch = {"image": np.stack([src[i]["image"] for i in range(8)]), "label": np.arange(8, dtype=np.int32)}
  results = []
  for per_device, accumulation in ((8, 1), (4, 2)):
    cfg = tiny_config(f"--config.training.per_gpu_batch_size={per_device}",
                      f"--config.training.gradient_accumulation_steps={accumulation}")
    mesh = make_mesh(cfg)
    task = BarFsqTask(cfg, mesh, str(tmp_path))
    assert task.global_batch == 8 and task.spec.accumulation == accumulation
    with jax.set_mesh(mesh):
      state, metrics = task.step(task.init_state(), task.to_device(batch), 0)
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (big, m_big), (acc, m_acc) = results
  for key in ("total_loss", "reconstruction_loss", "clip_loss", "grad_norm"):
    np.testing.assert_allclose(m_acc[key], m_big[key], rtol=1e-5, err_msg=key)
  adam = lambda s: [x for x in jax.tree.leaves(s.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                    if isinstance(x, optax.ScaleByAdamState)][0]
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
  jax.tree.map(close, adam(acc).mu, adam(big).mu)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-14), adam(acc).nu, adam(big).nu)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), acc.params, big.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), acc.ema_params, big.ema_params)
  assert int(adam(acc).count) == int(adam(big).count) == 1 and int(acc.step) == 1


def test_encoder_starts_from_the_published_siglip2_file(tmp_path):
  """A file in the hub's SigLIP2 layout (``vision_model.*`` plus a text tower) fills ``encoder.siglip`` and
  both trainable copies, as the reference's deep copy does; a missing file names where it is published."""
  from flax import linen as nn

  from maskbit_jax.convert import bar_tokenizer_mapping as btm
  from maskbit_jax.models.bar_tokenizer import abstract_bar_tokenizer_params, bar_tokenizer_from_config

  module = bar_tokenizer_from_config(tiny_config())
  rng = np.random.default_rng(1)  # random values in the param tree's shapes (no init program to compile)
  params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype),
                        nn.meta.unbox(abstract_bar_tokenizer_params(module)))
  state = btm.flax_to_bar_tokenizer_state(params, module, with_aliases=False)
  hub = {"vision_model." + k[len("encoder.siglip."):]: v for k, v in state.items() if k.startswith("encoder.siglip.")}
  hub["text_model.embeddings.token_embedding.weight"] = np.zeros((4, 2), np.float32)
  np.savez(tmp_path / "siglip2.npz", **hub)
  encoder = btm.siglip2_encoder_params(tmp_path / "siglip2.npz", nn.meta.unbox(abstract_bar_tokenizer_params(module)))
  assert_trees_equal(encoder["siglip"], params["encoder"]["siglip"])
  assert_trees_equal(encoder["trainable_encoder"], params["encoder"]["siglip"]["encoder"])
  assert_trees_equal(encoder["trainable_post_layernorm"], params["encoder"]["siglip"]["post_layernorm"])
  with pytest.raises(FileNotFoundError, match="google/siglip2-so400m-patch16-naflex") as err:
    btm.siglip2_encoder_params(tmp_path / "absent.safetensors", params)
  assert "\n" not in str(err.value)
