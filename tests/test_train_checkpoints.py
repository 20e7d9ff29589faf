"""Training checkpoints restore to identical state, keep the last k, and survive a corrupt latest step."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskbit_jax import sharding
from maskbit_jax.train import checkpoints


def _state(seed: int):
  k = jax.random.key(seed)
  return {"params": {"w": jax.random.normal(k, (8, 16)), "b": jnp.arange(16.0)},
          "opt": {"mu": jnp.full((8, 16), float(seed))}, "step": jnp.int32(seed), "rng": jax.random.key_data(k)}


def _assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_restore_is_identical_and_keeps_last_k(tmp_path):
  mgr = checkpoints.make_manager(str(tmp_path), save_every=1, keep=2)
  for step in (1, 2, 3):
    assert checkpoints.save(mgr, step, _state(step), {"data_position": step * 10})
  mgr.wait_until_finished()
  assert sorted(mgr.all_steps()) == [2, 3]
  step, state, meta = checkpoints.restore_latest(mgr, checkpoints.abstract_like(_state(0)))
  assert step == 3 and meta == {"data_position": 30}
  _assert_same(state, _state(3))


def test_corrupt_latest_falls_back_to_previous_and_is_set_aside(tmp_path, capsys):
  folder = tmp_path / "ckpt"
  mgr = checkpoints.make_manager(str(folder), save_every=1, keep=3)
  for step in (1, 2):
    checkpoints.save(mgr, step, _state(step))
  mgr.wait_until_finished()
  latest = folder / "2" / "state"
  for root, _, files in os.walk(latest):  # truncate every data file of the newest step
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(0)
  mgr = checkpoints.make_manager(str(folder), save_every=1, keep=3)
  step, state, _ = checkpoints.restore_latest(mgr, checkpoints.abstract_like(_state(0)))
  assert step == 1
  _assert_same(state, _state(1))
  out = capsys.readouterr().out
  assert f"checkpoint {folder / '2'} fails verification" in out
  assert f"moved to {tmp_path / 'ckpt_rejected' / '2'}" in out
  assert mgr.all_steps() == [1] and checkpoints.save(mgr, 2, _state(7))  # the step is free for the next save


@pytest.mark.parametrize("async_save", [True, False])
def test_every_save_is_sealed_once_finished(tmp_path, async_save):
  mgr = checkpoints.make_manager(str(tmp_path), save_every=1, async_save=async_save)
  checkpoints.save(mgr, 4, _state(4))
  mgr.wait_until_finished()
  assert (tmp_path / "4" / checkpoints.MANIFEST).is_file() and checkpoints.verify(tmp_path / "4") is None
  mgr.close()


def _place(state, mesh, axis):
  """Leading dim split over ``axis`` where it divides, everything else replicated."""
  def one(x):
    spec = (jax.sharding.PartitionSpec(axis) if x.ndim and x.shape[0] % mesh.shape[axis] == 0
            else jax.sharding.PartitionSpec())
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
  return jax.tree.map(one, state)


def test_restore_onto_another_mesh(tmp_path):
  mesh_a = sharding.create_mesh({"data": 8})
  mesh_b = sharding.create_mesh({"data": 2, "fsdp": 4})
  state = _place(_state(5), mesh_a, "data")
  mgr = checkpoints.make_manager(str(tmp_path), save_every=1)
  checkpoints.save(mgr, 5, state)
  mgr.wait_until_finished()
  target = _place(_state(0), mesh_b, "fsdp")
  step, restored, _ = checkpoints.restore_latest(mgr, checkpoints.abstract_like(target))
  assert step == 5
  assert restored["params"]["w"].sharding.mesh.shape == mesh_b.shape
  _assert_same(restored, _state(5))


def test_empty_directory_and_bad_options(tmp_path):
  assert checkpoints.restore_latest(checkpoints.make_manager(str(tmp_path / "new")),
                                    checkpoints.abstract_like(_state(0))) is None
  with pytest.raises(ValueError, match="keep"):
    checkpoints.make_manager(str(tmp_path), keep=0)
