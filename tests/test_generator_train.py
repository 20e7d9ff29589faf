"""Stage-II training step: the loss goes down on a learnable toy task, and 8 devices equal 1."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import maskbit_jax
from conftest import REPO
from maskbit_jax import sharding
from maskbit_jax.train.generator_step import MLMSettings, init_train_state, make_jitted_step, mlm_train_step
from maskbit_jax.train.optim import make_optimizer

TINY = str(REPO / "configs/generator_tiny.py")


def _toy_batch(rng: np.random.Generator, batch: int, grid: int, bits: int) -> dict:
  """Tokens that are a deterministic function of (class, position): learnable from the label alone."""
  labels = rng.integers(0, 4, batch)
  pos = np.arange(grid * grid)
  tokens = (labels[:, None] * 977 + pos[None] * 131) % (2**bits)
  return {"tokens": tokens.reshape(batch, grid, grid).astype(np.int32), "label": labels.astype(np.int32)}


@pytest.fixture(scope="module")
def setup():
  cfg = maskbit_jax.load_config(TINY, ["--config.lr_scheduler.params.warmup_steps=5",
                                       "--config.optimizer.params.learning_rate=0.003",
                                       "--config.training.max_train_steps=200"])
  gen = maskbit_jax.load_generator(cfg, random_init=True, seed=0)
  tx = make_optimizer(cfg, kind="mlm")
  return cfg, gen, tx, MLMSettings.from_config(cfg)


def test_mlm_loss_goes_down(setup):
  cfg, gen, tx, settings = setup
  step = jax.jit(lambda s, b: mlm_train_step(s, b, module=gen.module, tx=tx, settings=settings), donate_argnums=0)
  state = init_train_state(gen.module, tx, gen.params, jax.random.key(0))
  rng = np.random.default_rng(0)
  grid = int(gen.seq_len ** 0.5)
  losses = []
  for _ in range(60):
    state, metrics = step(state, _toy_batch(rng, 16, grid, gen.token_bits))
    losses.append(float(metrics["mlm_loss"]))
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert np.all(np.isfinite(losses))
  assert last < 0.7 * first, f"loss {first:.3f} -> {last:.3f}: expected a drop of at least 30 %"
  assert int(state.step) == 60
  # the EMA moved towards the params but lags them
  p, e = jax.tree.leaves(state.params)[0], jax.tree.leaves(state.ema_params)[0]
  assert not np.allclose(np.asarray(p), np.asarray(e))


def test_sharded_step_equals_single_device(setup):
  cfg, gen, tx, settings = setup
  batch = _toy_batch(np.random.default_rng(1), 8, int(gen.seq_len ** 0.5), gen.token_bits)
  single = jax.jit(lambda s, b: mlm_train_step(s, b, module=gen.module, tx=tx, settings=settings))
  s1, m1 = single(init_train_state(gen.module, tx, gen.params, jax.random.key(3)), batch)
  mesh = sharding.create_mesh({"data": 2, "fsdp": 4})
  step, state_sh, batch_sh = make_jitted_step(gen.module, tx, settings, mesh)
  state = jax.device_put(init_train_state(gen.module, tx, gen.params, jax.random.key(3)), state_sh)
  with jax.set_mesh(mesh):
    s8, m8 = step(state, jax.device_put(batch, batch_sh))
  np.testing.assert_allclose(float(m8["mlm_loss"]), float(m1["mlm_loss"]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
               s8.params, s1.params)
  kernel = s8.params["transformer_layers"]["ffn"]["net_0"]["kernel"]  # [layers, embed, mlp]
  assert kernel.sharding.spec[1] == "fsdp"


def test_gradient_accumulation_equals_one_big_batch(setup):
  """k micro-batches inside one step give the mean gradient: the same update as the whole batch at once."""
  import dataclasses

  cfg, gen, tx, settings = setup
  batch = _toy_batch(np.random.default_rng(2), 8, int(gen.seq_len ** 0.5), gen.token_bits)
  out = []
  for k in (1, 4):
    s = dataclasses.replace(settings, accumulation=k)
    step = jax.jit(lambda st, b, s=s: mlm_train_step(st, b, module=gen.module, tx=tx, settings=s))
    out.append(step(init_train_state(gen.module, tx, gen.params, jax.random.key(5)), batch))
  (s1, m1), (s4, m4) = out
  np.testing.assert_allclose(float(m4["mlm_loss"]), float(m1["mlm_loss"]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
               s4.params, s1.params)
  with pytest.raises(ValueError, match="does not split into 3"):
    jax.jit(lambda st, b: mlm_train_step(st, b, module=gen.module, tx=tx,
                                         settings=dataclasses.replace(settings, accumulation=3)))(
        init_train_state(gen.module, tx, gen.params, jax.random.key(5)), batch)
