"""BAR train step on 8 simulated devices: the state is placed by the rules table, and 8 devices compute what 1 does.

``configs/bar_tiny.py`` on a random-init tiny tokenizer (bits made inside the step, as in
``test_bar_train.py``); one step on a ``data=2, fsdp=4`` mesh against one step on one device with the
same global batch.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import linen as nn

import maskbit_jax
from conftest import REPO, expected_spec
from maskbit_jax import checkpointing, sharding
from maskbit_jax.train.loop import make_mesh
from maskbit_jax.train.tasks import make_task

BAR_TINY = str(REPO / "configs/bar_tiny.py")
TOK_TINY = str(REPO / "configs/tokenizer_tiny.py")
GLOBAL_BATCH = 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  tok = maskbit_jax.load_tokenizer(TOK_TINY, random_init=True, seed=5)
  path = tmp_path_factory.mktemp("tok") / "tokenizer"
  checkpointing.save_params(path, tok.params, kind="tokenizer", config=tok.config.to_dict())
  return str(path)


def _task(tokenizer_dir, mesh_overrides, workdir):
  cfg = maskbit_jax.load_config(BAR_TINY, [
      f"--config.experiment.vqgan_checkpoint={tokenizer_dir}", f"--config.training.global_batch_size={GLOBAL_BATCH}",
      "--config.dataset.num_threads=1", "--config.lr_scheduler.params.warmup_steps=0"] + mesh_overrides)
  mesh = make_mesh(cfg)
  return make_task(cfg, mesh, str(workdir)), mesh


def test_state_shardings_follow_the_rules_table(tokenizer_dir, tmp_path):
  from maskbit_jax.models.bar_generator import abstract_bar_params

  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  task, mesh = _task(tokenizer_dir, ["--config.runtime.mesh.data=2", "--config.runtime.mesh.fsdp=4"], tmp_path)
  boxed = jax.tree.leaves(abstract_bar_params(task.module), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  state = task.init_state()
  params = jax.tree.leaves(state.params)
  assert len(boxed) == len(params) > 0
  for box, p in zip(boxed, params):
    got = tuple(p.sharding.spec) + (None,) * (p.ndim - len(p.sharding.spec))
    assert got == expected_spec(box.names, p.shape, mesh), (box.names, p.shape, got)
  assert any("fsdp" in tuple(p.sharding.spec) for p in params)  # something is actually split
  # AdamW moments are placed like the parameters they follow
  moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) > 0]
  by_shape = {(p.shape, p.sharding.spec) for p in params}
  assert moments and all((m.shape, m.sharding.spec) in by_shape for m in moments)


def test_eight_devices_equal_one(tokenizer_dir, tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  results, batch = [], None
  for i, overrides in enumerate((["--config.runtime.num_devices=1"],
                                 ["--config.runtime.mesh.data=2", "--config.runtime.mesh.fsdp=4"])):
    task, mesh = _task(tokenizer_dir, overrides, tmp_path / str(i))
    assert task.global_batch == GLOBAL_BATCH
    if batch is None:
      batch = next(iter(task.dataset()))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      state = task.init_state()
      init = jax.device_get(state.params)  # copied before the step donates the state
      state, metrics = task.step(state, task.to_device(batch), 0)
    results.append((init, jax.device_get(state.params), jax.device_get(metrics), mesh.size))
  (i1, p1, m1, n1), (i8, p8, m8, n8) = results
  assert (n1, n8) == (1, 8)
  for key in ("mbm_loss", "masked_bit_acc", "grad_norm"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
  jax.tree.map(np.testing.assert_array_equal, i8, i1)  # the same initial state on both meshes
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), p1, i1)))  # the step moved them
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), p8, p1)
