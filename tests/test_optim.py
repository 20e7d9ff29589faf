"""Optimizer, learning-rate schedule and EMA of the training recipes (``maskbit_jax.train.optim``).

Golden values: ``losses.npz`` ``ema_steps``/``ema_decay``, ``ema_toy_*`` and
``lr_steps``/``lr_multiplier``. The fixtures store steps and values only; the
hyper-parameters they were made with come from the golden README text (EMA
decay 0.999; ``cosine_with_minimum`` with warm-up 5000, 1.35M steps, floor 0.1).
The optimizer checks compare with a float64 numpy transcription of PyTorch's
AdamW / ``clip_grad_norm_`` arithmetic.
"""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import load_npz
from maskbit_jax.train import optim

# From the golden README, section 6 (not stored in the fixture files).
EMA_DECAY = 0.999
LR_WARMUP, LR_TOTAL, LR_FLOOR = 5000, 1_350_000, 0.1


@pytest.fixture(scope="module")
def losses(golden):
  return load_npz(golden / "losses.npz")


def _config(**training) -> dict:
  """A config with the reference yaml's optimizer / scheduler / training keys (tokenizer layout)."""
  cfg = {
      "optimizer": {"name": "adamw", "params": {
          "learning_rate": 1e-2, "discriminator_learning_rate": 2e-2, "scale_lr": False,
          "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.1, "epsilon": 1e-8}},
      "lr_scheduler": {"scheduler": "constant", "params": {"warmup_steps": 0}},
      "training": {"max_train_steps": 100, "max_grad_norm": None, "gradient_accumulation_steps": 1,
                   "mixed_precision": "no"},
      "losses": {"discriminator_start": 20},
  }
  cfg["training"].update(training)
  return cfg


# ---------------------------------------------------------------------------
# EMA


def test_ema_decay_matches_golden(losses):
  got = np.asarray(jax.jit(optim.ema_decay)(jnp.asarray(losses["ema_steps"], jnp.int32)), np.float64)
  np.testing.assert_allclose(got, losses["ema_decay"], rtol=0, atol=1e-7)
  # Python ints work too (the decay is also what a host-side logger would print).
  assert float(optim.ema_decay(2)) == pytest.approx(2 / 11, abs=1e-7)


def test_ema_toy_sequence_matches_golden(losses):
  # Only the final values are stored. The trajectory they were made from is
  # inferred: start at [1, -2, 3] (the EMA is a copy of it), add 0.5 per step,
  # one EMA update after each of 5 steps. Checked below against the stored
  # final parameters; the EMA then matches the stored one bit for bit.
  params = {"w": jnp.asarray([1.0, -2.0, 3.0], jnp.float32)}
  ema = jax.tree_util.tree_map(jnp.copy, params)
  update = jax.jit(optim.ema_update)
  for step in range(1, 6):
    params = {"w": params["w"] + jnp.float32(0.5)}
    ema = update(ema, params, step)
  np.testing.assert_array_equal(np.asarray(params["w"]), losses["ema_toy_param_after_5_steps"])
  np.testing.assert_allclose(np.asarray(ema["w"]), losses["ema_toy_shadow_after_5_steps"], rtol=0, atol=1e-7)


def test_ema_update_rounding_and_first_step():
  one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
  # First update (step 1): decay 0, the EMA becomes the parameters.
  assert float(optim.ema_update(one, jnp.float32(0.25), 1)) == 0.25
  # Capped decay: the float32 update uses float32(1 - 0.999) (formed in float64),
  # not 1 - float32(0.999); the two differ by 1.3e-5 relative.
  # With ema = 0 and param = 1 the update returns that factor itself.
  got = np.float32(optim.ema_update(zero, one, 100_000))
  assert got == np.float32(1 - EMA_DECAY)
  assert got != np.float32(1) - np.float32(EMA_DECAY)
  # Uncapped: 1 - d = 9 / (10 + s), s = step - 1, one float32 rounding.
  assert np.float32(optim.ema_update(zero, one, 8)) == np.float32(9 / 17)


def _ref_decay(step, decay=0.999, min_decay=0.0, after=0, warmup=False, inv_gamma=1.0, power=2 / 3):
  s = max(0, step - after - 1)
  if s <= 0:
    return 0.0
  d = 1 - (1 + s / inv_gamma) ** -power if warmup else (1 + s) / (10 + s)
  return max(min(d, decay), min_decay)


@pytest.mark.parametrize("kwargs", [
    dict(decay=0.9999),
    dict(min_decay=0.5),  # not applied at s == 0 (the reference returns 0 first)
    dict(update_after_step=3),
    dict(use_ema_warmup=True, inv_gamma=1.0, power=2 / 3),
    dict(use_ema_warmup=True, inv_gamma=2.0, power=0.75, decay=0.99),
])
def test_ema_decay_variants(kwargs):
  ref_kwargs = dict(decay=kwargs.get("decay", 0.999), min_decay=kwargs.get("min_decay", 0.0),
                    after=kwargs.get("update_after_step", 0), warmup=kwargs.get("use_ema_warmup", False),
                    inv_gamma=kwargs.get("inv_gamma", 1.0), power=kwargs.get("power", 2 / 3))
  steps = np.array([0, 1, 2, 3, 4, 5, 10, 50, 1000, 31_623, 10**6])
  want = np.array([_ref_decay(int(s), **ref_kwargs) for s in steps])
  got = np.asarray(optim.ema_decay(jnp.asarray(steps), **kwargs), np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)
  # The update uses the same decay: ema = 1, param = 0 -> 1 - (1 - d) = d.
  upd = np.asarray(optim.ema_update(jnp.ones(len(steps)), jnp.zeros(len(steps)), jnp.asarray(steps), **kwargs))
  np.testing.assert_allclose(upd, want, rtol=0, atol=2e-7)


def test_ema_update_every():
  ema, p = jnp.ones((2,), jnp.float32), jnp.zeros((2,), jnp.float32)
  # (step - 1) % update_every != 0 -> unchanged; otherwise the usual update.
  assert np.all(np.asarray(optim.ema_update(ema, p, 3, update_every=2)) == 0.25)  # s = 2: d = 3 / 12
  assert np.all(np.asarray(optim.ema_update(ema, p, 4, update_every=2)) == 1.0)


# ---------------------------------------------------------------------------
# Learning-rate schedules


def _ref_cosine_with_minimum(step, warmup, total, minimum):
  if step < warmup:
    return step / max(1, warmup)
  progress = (step - warmup) / max(1, total - warmup)
  c = 0.5 * (1.0 + math.cos(math.pi * progress))
  return max(0.0, c + minimum - minimum * c)


def test_lr_multiplier_matches_golden(losses):
  schedule = jax.jit(optim.cosine_with_minimum_schedule(1.0, LR_WARMUP, LR_TOTAL, LR_FLOOR))
  got = np.asarray(schedule(jnp.asarray(losses["lr_steps"], jnp.int32)), np.float64)
  np.testing.assert_allclose(got, losses["lr_multiplier"], rtol=1e-7, atol=0)
  # The same through the config path (reference keys, scale_lr off).
  cfg = _config(max_train_steps=LR_TOTAL)
  cfg["lr_scheduler"] = {"scheduler": "cosine_with_minimum", "params": {"warmup_steps": LR_WARMUP}}
  cfg["optimizer"]["params"]["learning_rate"] = 1e-4
  got = np.asarray(optim.make_schedule(cfg)(jnp.asarray(losses["lr_steps"], jnp.int32)), np.float64)
  np.testing.assert_allclose(got, 1e-4 * losses["lr_multiplier"], rtol=2e-7, atol=0)


def test_lr_multiplier_dense_grid():
  # float32 evaluation vs the float64 formula at every 97th step, past the end too:
  # within about two float32 ulps everywhere.
  steps = np.arange(0, 1_420_000, 97)
  want = np.array([_ref_cosine_with_minimum(int(s), LR_WARMUP, LR_TOTAL, LR_FLOOR) for s in steps])
  got = np.asarray(jax.jit(optim.cosine_with_minimum_schedule(1.0, LR_WARMUP, LR_TOTAL, LR_FLOOR))(steps),
                   np.float64)
  np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-12)


def _ref_multiplier(name, step, w, t, cycles=1, power=1.0, lr_init=1.0, lr_end=1e-7):
  if name == "constant":
    return 1.0
  if step < w:
    return step / max(1, w)
  if name == "constant_with_warmup":
    return 1.0
  progress = (step - w) / max(1, t - w)
  if name == "linear":
    return max(0.0, (t - step) / max(1, t - w))
  if name == "cosine":
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
  if name == "cosine_with_restarts":
    return 0.0 if progress >= 1.0 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
  assert name == "polynomial"
  if step > t:
    return lr_end / lr_init
  return ((lr_init - lr_end) * (1 - (step - w) / (t - w)) ** power + lr_end) / lr_init


@pytest.mark.parametrize("name,extra", [
    ("constant", {}), ("constant_with_warmup", {}), ("linear", {}), ("cosine", {}),
    ("cosine_with_restarts", {"num_cycles": 3}), ("polynomial", {"power": 2.0}),
])
def test_other_reference_schedules(name, extra):
  w, t, lr = 10, 110, 0.5
  steps = np.arange(0, 130)
  schedule = optim.reference_schedule(name, lr, warmup_steps=w, total_steps=t, **extra)
  want = np.array([_ref_multiplier(name, int(s), w, t, cycles=extra.get("num_cycles", 1),
                                   power=extra.get("power", 1.0), lr_init=lr) for s in steps])
  # float32 math on the reference's own formulas (the direct 1 + cos form
  # loses relative precision near zero, hence the absolute tolerance).
  np.testing.assert_allclose(np.asarray(schedule(steps), np.float64), lr * want, rtol=2e-6, atol=1e-7)


def test_schedule_kinds_from_config():
  cfg = _config(max_train_steps=1000)
  cfg["lr_scheduler"] = {"scheduler": "cosine_with_minimum", "params": {"warmup_steps": 10}}
  steps = np.array([0, 5, 10, 500, 990, 999])
  # Discriminator: its own learning rate and steps; total = max_train_steps - start / num_processes.
  for procs in (1, 4):
    got = np.asarray(optim.make_schedule(cfg, kind="discriminator", num_processes=procs)(steps))
    want = [2e-2 * _ref_cosine_with_minimum(int(s), 10, 1000 - 20 / procs, 0.1) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6)
  # scale_lr multiplies tokenizer learning rates by the total batch size; mlm never scales.
  cfg["optimizer"]["params"]["scale_lr"] = True
  assert float(optim.make_schedule(cfg, total_batch_size=64)(10)) == pytest.approx(1e-2 * 64, rel=1e-6)
  assert float(optim.make_schedule(cfg, kind="mlm")(10)) == pytest.approx(1e-2, rel=1e-6)
  with pytest.raises(ValueError, match="total_batch_size"):
    optim.make_schedule(cfg, kind="discriminator")
  with pytest.raises(ValueError, match="kind"):
    optim.make_schedule(cfg, kind="tokenizer")


# ---------------------------------------------------------------------------
# Optimizer


def _params():
  rng = np.random.RandomState(0)
  return {
      "conv": {"kernel": jnp.asarray(rng.randn(3, 3, 2, 4), jnp.float32),
               "bias": jnp.asarray(rng.randn(4), jnp.float32)},
      "norm": {"scale": jnp.asarray(1 + 0.1 * rng.randn(4), jnp.float32)},
      "codebook": jnp.asarray(rng.randn(8, 3), jnp.float32),
  }


def _grads(seed, scale=1.0):
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda p: jnp.asarray(scale * rng.randn(*p.shape), jnp.float32), _params())


def _torch_adamw_reference(params, grad_list, lrs, b1, b2, eps, wd, max_norm=None):
  """float64 transcription of torch clip_grad_norm_ + AdamW (single group)."""
  p = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  m = [np.zeros_like(x) for x in p]
  v = [np.zeros_like(x) for x in p]
  for t, (grads, lr) in enumerate(zip(grad_list, lrs), start=1):
    g = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(grads)]
    if max_norm is not None:
      norm = math.sqrt(sum(float(np.sum(x * x)) for x in g))
      coef = min(max_norm / (norm + 1e-6), 1.0)
      g = [x * coef for x in g]
    for i in range(len(p)):
      p[i] = p[i] * (1 - lr * wd)
      m[i] = b1 * m[i] + (1 - b1) * g[i]
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
      denom = np.sqrt(v[i]) / math.sqrt(1 - b2**t) + eps
      p[i] = p[i] - lr / (1 - b1**t) * m[i] / denom
  return p


def _run(tx, params, grad_list):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in grad_list:
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_clip_matches_torch():
  grads = _grads(1)
  norm = float(optax.tree.norm(grads))
  clipped, _ = optim.clip_by_global_norm_torch(1.0).update(grads, optax.EmptyState())
  assert float(optax.tree.norm(clipped)) == pytest.approx(norm / (norm + 1e-6), rel=1e-6)
  assert float(optax.tree.norm(clipped)) < 1.0
  kept, _ = optim.clip_by_global_norm_torch(2 * norm).update(grads, optax.EmptyState())
  jax.tree_util.tree_map(np.testing.assert_array_equal, kept, grads)


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_adamw_matches_torch_with_warmup(max_norm):
  # Warm-up of 2 steps: optimizer step k uses lr * k / 2, so step 0 moves
  # nothing (lr 0, decay included) but fills the moments, as in the reference.
  cfg = _config(max_grad_norm=max_norm)
  cfg["lr_scheduler"] = {"scheduler": "constant_with_warmup", "params": {"warmup_steps": 2}}
  tx = optim.make_optimizer(cfg)
  grad_list = [_grads(s, scale=3.0) for s in range(4)]
  got = _run(tx, _params(), grad_list)
  want = _torch_adamw_reference(_params(), grad_list, [0.0, 5e-3, 1e-2, 1e-2], 0.9, 0.999, 1e-8, 0.1, max_norm)
  for a, b in zip(jax.tree_util.tree_leaves(got), want):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-5, atol=1e-6)
  # The first update alone leaves every parameter untouched.
  first = _run(tx, _params(), grad_list[:1])
  jax.tree_util.tree_map(np.testing.assert_array_equal, first, _params())


def test_weight_decay_reaches_every_parameter():
  # The reference's single AdamW group decays biases, norm scales and the
  # codebook too. Zero gradients isolate the decay: p <- p * (1 - lr * wd).
  tx = optim.make_optimizer(_config())
  zeros = jax.tree_util.tree_map(jnp.zeros_like, _params())
  got = _run(tx, _params(), [zeros])
  for path_a, a in jax.tree_util.tree_leaves_with_path(got):
    b = dict(jax.tree_util.tree_leaves_with_path(_params()))[path_a]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b) * (1 - 1e-2 * 0.1), rtol=1e-6, err_msg=str(path_a))
  # The discriminator uses its own learning rate with the same betas / decay.
  got = _run(optim.make_optimizer(_config(), kind="discriminator"), _params(), [zeros])
  np.testing.assert_allclose(np.asarray(got["conv"]["bias"]), np.asarray(_params()["conv"]["bias"]) * (1 - 2e-2 * 0.1),
                             rtol=1e-6)
  # An explicit mask is an opt-in deviation.
  mask = jax.tree_util.tree_map(lambda p: p.ndim > 1, _params())
  got = _run(optim.make_optimizer(_config(), weight_decay_mask=mask), _params(), [zeros])
  np.testing.assert_array_equal(np.asarray(got["conv"]["bias"]), np.asarray(_params()["conv"]["bias"]))


def test_gradient_accumulation_equals_mean_gradient_step():
  k = 3
  micro = [_grads(10 + i, scale=2.0) for i in range(2 * k)]  # two full optimizer steps
  means = [jax.tree_util.tree_map(lambda *g: sum(g) / k, *micro[j * k:(j + 1) * k]) for j in range(2)]
  cfg = _config(max_grad_norm=1.0)
  cfg["lr_scheduler"] = {"scheduler": "constant_with_warmup", "params": {"warmup_steps": 1}}
  accum_cfg = copy.deepcopy(cfg)
  accum_cfg["training"]["gradient_accumulation_steps"] = k
  accum_tx = optim.make_optimizer(accum_cfg)
  # Micro-steps before the k-th change nothing.
  partial = _run(accum_tx, _params(), micro[:k - 1])
  jax.tree_util.tree_map(np.testing.assert_array_equal, partial, _params())
  got = _run(accum_tx, _params(), micro)
  want = _run(optim.make_optimizer(cfg), _params(), means)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  # ... and the schedule advanced once per optimizer step (lr 0 on the first).
  assert not np.allclose(np.asarray(got["codebook"]), np.asarray(_params()["codebook"]))


@pytest.mark.parametrize("key", [
    "optimizer.params.beta2", "optimizer.params.weight_decay", "optimizer.name", "lr_scheduler.scheduler",
    "lr_scheduler.params.warmup_steps", "training.max_train_steps", "training.max_grad_norm",
    "training.gradient_accumulation_steps", "optimizer.params.scale_lr",
])
@pytest.mark.parametrize("as_config_dict", [False, True])
def test_missing_config_key_is_named(key, as_config_dict):
  cfg = _config()
  *parents, leaf = key.split(".")
  node = cfg
  for part in parents:
    node = node[part]
  del node[leaf]
  if as_config_dict:
    cfg = ml_collections.ConfigDict(cfg)
  with pytest.raises(KeyError, match=key.replace(".", r"\.")):
    optim.make_optimizer(cfg)


def test_missing_section_and_bad_values():
  cfg = _config()
  del cfg["lr_scheduler"]
  with pytest.raises(KeyError, match=r"lr_scheduler\.scheduler.*no 'lr_scheduler'"):
    optim.make_optimizer(cfg)
  with pytest.raises(KeyError, match=r"losses\.discriminator_start"):
    optim.make_optimizer({k: v for k, v in _config().items() if k != "losses"}, kind="discriminator")
  cfg = _config()
  cfg["optimizer"]["name"] = "adam"
  with pytest.raises(ValueError, match="adamw"):
    optim.make_optimizer(cfg)
  with pytest.raises(ValueError, match="fp16"):
    optim.make_optimizer(_config(mixed_precision="fp16"))
  cfg = _config()
  cfg["lr_scheduler"]["scheduler"] = "cosine_with_maximum"
  with pytest.raises(ValueError, match="unknown lr scheduler"):
    optim.make_optimizer(cfg)
