"""Stage-I step on 8 simulated devices: shardings follow the rules table, and 8 devices compute what 1 does."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import linen as nn

import maskbit_jax
from conftest import REPO, expected_spec
from maskbit_jax.data.sources import make_source
from maskbit_jax.train.loop import make_mesh
from maskbit_jax.train.tasks import TokenizerTask

TOK = str(REPO / "configs/tokenizer_tiny.py")


def _task(mesh_overrides, tmp_path):
  cfg = maskbit_jax.load_config(TOK, ["--config.training.global_batch_size=8", "--config.losses.discriminator_start=0",
                                      "--config.training.max_train_steps=10"] + mesh_overrides)
  mesh = make_mesh(cfg)
  return TokenizerTask(cfg, mesh, str(tmp_path)), mesh


def _batch():
  src = make_source("synthetic:8", 32)
  return {"image": np.stack([src[i]["image"] for i in range(8)]), "label": np.arange(8, dtype=np.int32)}


@pytest.mark.parametrize("mesh_overrides", [
    ["--config.runtime.mesh.data=8"],
    ["--config.runtime.mesh.data=2", "--config.runtime.mesh.fsdp=4"],
], ids=["data8", "data2_fsdp4"])
def test_state_shardings_follow_the_rules_table(mesh_overrides, tmp_path):
  task, mesh = _task(mesh_overrides, tmp_path)
  from maskbit_jax.models.tokenizer import abstract_tokenizer_params

  boxed = abstract_tokenizer_params(task.model)
  state = task.init_state()
  flat_boxed = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  flat_params = jax.tree.leaves(state.params)
  mu = state.opt_state[1][0].mu  # clip -> adamw(scale_by_adam ...): Adam's first moment follows the params
  for box, p, m in zip(flat_boxed, flat_params, jax.tree.leaves(mu)):
    want = expected_spec(box.names, p.shape, mesh)
    got = tuple(p.sharding.spec) + (None,) * (p.ndim - len(p.sharding.spec))
    assert got == want, (box.names, p.shape, got, want)
    assert m.sharding == p.sharding
  if mesh.shape["fsdp"] > 1:  # something is actually split over fsdp
    assert any("fsdp" in tuple(p.sharding.spec) for p in flat_params)
  assert state.step.sharding.is_fully_replicated


def test_eight_devices_equal_one(tmp_path):
  batch = _batch()
  results = []
  for overrides in (["--config.runtime.num_devices=1"], ["--config.runtime.mesh.data=2",
                                                         "--config.runtime.mesh.fsdp=4"]):
    task, mesh = _task(overrides, tmp_path)
    with jax.set_mesh(mesh):
      state = task.init_state()
      state, metrics = task.step(state, task.to_device(batch), 0)
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (s1, m1), (s8, m8) = results
  for key in ("total_loss", "discriminator_loss", "lecam_loss", "gan_loss"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, atol=1e-7, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), s8.params, s1.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), s8.disc_params, s1.disc_params)
