"""Every saved state of a training run is protected: checksummed checkpoints, corrupt steps set aside and
rewritten, run-defining config values, one trainer per workdir, and short fallback messages.

One tiny tokenizer run (2 steps, a checkpoint at each) is trained once for the module; each test works on
a copy of it and checks that the good checkpoint it did not mean to touch is byte for byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
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
from maskbit_jax.train import checkpoints, loop
from maskbit_jax.train.loop import RunMismatchError, WorkdirLockedError, train
from maskbit_jax.train.tasks import make_task

TOK = str(REPO / "configs/tokenizer_tiny.py")
GEN = str(REPO / "configs/generator_tiny.py")
RUN = ["--config.runtime.num_devices=1", "--config.dataset.num_threads=1", "--config.training.per_gpu_batch_size=2",
       "--config.training.max_train_steps=2", "--config.experiment.save_every=1",
       "--config.experiment.eval_every=1000", "--config.experiment.generate_every=1000",
       "--config.experiment.eval_images=0", "--config.training.num_generated_images=1"]


def tok_config(*overrides):
  return maskbit_jax.load_config(TOK, RUN + list(overrides))


def file_hashes(folder) -> dict:
  """sha256 of every file below ``folder``, by relative path."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def flip_bytes(step_dir, count: int = 64) -> str:
  """Inverts ``count`` bytes in the middle of the step's largest array file; returns its path."""
  files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "state")) for n in ns]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    data = f.read(count)
    f.seek(-len(data), 1)
    f.write(bytes(b ^ 0xFF for b in data))
  return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 2-step run with checkpoints 1 and 2, and its final state (as restored)."""
  work = str(tmp_path_factory.mktemp("integrity") / "run")
  summary = train(tok_config(), work)
  assert summary["finished"] and sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["1", "2"]
  step, state, _ = restored_state(work)
  assert step == 2
  return work, jax.device_get(state)


@pytest.fixture
def run(trained, tmp_path):
  """A copy of the trained run, and the hashes of its step-1 checkpoint (which must survive every test)."""
  work = str(tmp_path / "run")
  shutil.copytree(trained[0], work)
  step1 = os.path.join(work, "checkpoints", "1")
  return work, step1, file_hashes(step1)


# ----------------------------------------------------------------------------------------- 3. integrity


def test_every_saved_step_is_sealed_with_the_checksums_of_its_files(run):
  work, _, _ = run
  for step in ("1", "2"):
    folder = os.path.join(work, "checkpoints", step)
    with open(os.path.join(folder, checkpoints.MANIFEST)) as f:
      files = json.load(f)["files"]
    assert set(files) == set(file_hashes(folder)) - {checkpoints.MANIFEST}
    assert any(name.startswith("state/") for name in files)
    assert checkpoints.verify(folder) is None


def test_flipped_bytes_in_the_newest_step_are_named_and_it_is_skipped(run, capsys):
  work, step1, step1_hashes = run
  flipped = flip_bytes(os.path.join(work, "checkpoints", "2"))
  manager = checkpoints.make_manager(os.path.join(work, "checkpoints"), async_save=False)
  step, _, meta = checkpoints.restore_latest(manager, None)
  manager.close()
  out = capsys.readouterr().out
  assert step == 1 and meta["data"]["next_index"] == 2
  name = os.path.relpath(flipped, os.path.join(work, "checkpoints", "2"))
  assert f"checkpoint {work}/checkpoints/2 fails verification: {name} does not match its checksum" in out
  assert file_hashes(step1) == step1_hashes


# ----------------------------------------------------------------------------------------- 4. rewritten


def test_a_corrupt_step_is_moved_aside_and_rewritten_by_the_next_save_at_that_step(run, trained, capsys):
  work, step1, step1_hashes = run
  bad = os.path.join(work, "checkpoints", "2")
  flip_bytes(bad)
  bad_hashes = file_hashes(bad)
  summary = train(tok_config(), work)
  out = capsys.readouterr().out
  assert summary["start_step"] == 1 and summary["end_step"] == 2 and summary["finished"]
  aside = os.path.join(work, "checkpoints_rejected", "2")
  assert f"checkpoint {bad} moved to {aside}" in out
  assert file_hashes(aside) == bad_hashes  # kept as it was, for a look
  assert checkpoints.verify(bad) is None and os.path.exists(os.path.join(bad, checkpoints.MANIFEST))
  step, state, _ = restored_state(work)
  assert step == 2
  assert_trees_equal(state, trained[1])  # the resumed step 2 is the original one, bit for bit
  assert file_hashes(step1) == step1_hashes
  again = train(tok_config(), work)  # a finished run does not retrain its last steps
  assert again["start_step"] == again["end_step"] == 2
  assert file_hashes(step1) == step1_hashes


def test_a_folder_where_no_step_restores_is_an_error_and_left_alone(run):
  work, step1, _ = run
  for step in ("1", "2"):
    flip_bytes(os.path.join(work, "checkpoints", step))
  before = file_hashes(os.path.join(work, "checkpoints"))
  manager = checkpoints.make_manager(os.path.join(work, "checkpoints"), async_save=False)
  with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint in .* restores \(steps \[1, 2\]"):
    checkpoints.restore_latest(manager, None)
  manager.close()
  assert file_hashes(os.path.join(work, "checkpoints")) == before


# ----------------------------------------------------------------------------------------- 5. run-defining


@pytest.mark.parametrize("override, key", [
    ("--config.training.global_batch_size=4", "training.global_batch_size: 0 -> 4"),
    ("--config.training.max_grad_norm=0.5", "training.max_grad_norm: 1.0 -> 0.5"),
    ("--config.training.mixed_precision=bf16", "training.mixed_precision: 'no' -> 'bf16'"),
    ("--config.training.use_ema=False", "training.use_ema: True -> False"),
])
def test_a_changed_run_is_refused_and_config_json_kept(run, override, key):
  work, step1, step1_hashes = run
  before = file_hashes(work)
  with pytest.raises(RunMismatchError, match=key.replace("(", r"\(").replace(")", r"\)")):
    train(tok_config(override), work)
  assert file_hashes(work) == before  # config.json, every checkpoint, the lock released


def test_a_changed_free_value_is_printed_and_config_json_keeps_the_first(run, capsys):
  work, _, _ = run
  path = os.path.join(work, loop.CONFIG_FILE)
  with open(path, "rb") as f:
    before = f.read()
  loop.check_workdir(work, tok_config("--config.experiment.log_every=7"), is_main=True)
  first = tok_config().experiment.log_every
  assert f"experiment.log_every: {first} -> 7" in capsys.readouterr().out
  with open(path, "rb") as f:
    assert f.read() == before


def test_the_global_batch_of_another_topology_is_refused(run):
  work, step1, step1_hashes = run
  before = file_hashes(work)
  with pytest.raises(RunMismatchError, match="global batch 2; this start's is 4"):
    train(tok_config("--config.runtime.num_devices=2"), work)
  assert file_hashes(work) == before


def _perturbed(value):
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 3
  if isinstance(value, float):
    return value * 2 + 1
  return {"error": "skip", "skip": "error"}.get(value, "synthetic:48:5" if str(value).startswith("synthetic")
                                                 else f"{value}_changed")


def _traced(cfg, workdir):
  """The jaxprs of the task's init and of its step (before and after the discriminator starts)."""
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  task = make_task(cfg, mesh, workdir)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    state = jax.eval_shape(task.init_state)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                         next(iter(task.dataset())))
    steps = [str(jax.make_jaxpr(lambda s, b, i=i: task.step(s, b, i))(state, batch)) for i in (0, 10**6)]
    return [str(jax.make_jaxpr(task.init_state)())] + steps


@pytest.mark.parametrize("stage", ["tokenizer", pytest.param("generator", marks=pytest.mark.slow)])
def test_changing_every_free_value_leaves_init_and_step_unchanged(stage, tmp_path):
  """Completeness of the run-defining set, which is everything but loop.FREE_TO_CHANGE: every free value a
  tiny config has (but the topology: mesh, devices) is changed at once, and the traced computation is not."""
  extra = []
  if stage == "generator":
    tok = maskbit_jax.load_tokenizer(TOK, random_init=True)
    checkpointing.save_params(tmp_path / "tok", tok.params, kind="tokenizer", config=tok.config.to_dict())
    extra = [f"--config.experiment.vqgan_checkpoint={tmp_path / 'tok'}"]
  config = TOK if stage == "tokenizer" else GEN
  base = maskbit_jax.load_config(config, RUN + extra)
  flat = loop._flatten(base.to_dict(), "")
  changed = {k: _perturbed(v) for k, v in flat.items()
             if loop.is_free(k) and not k.startswith(("runtime.mesh", "runtime.dcn_mesh", "runtime.num_devices"))
             and not isinstance(v, (list, tuple)) and v is not None}
  assert "experiment.save_every" in changed and "dataset.num_threads" in changed
  other = maskbit_jax.load_config(config, RUN + extra + [f"--config.{k}={v}" for k, v in changed.items()])
  assert loop.run_differences(base.to_dict(), other.to_dict()) == []
  assert _traced(base, str(tmp_path / "a")) == _traced(other, str(tmp_path / "b")), sorted(changed)


# ----------------------------------------------------------------------------------------- 6. lock


def test_a_second_trainer_on_a_locked_workdir_gets_an_error_naming_the_first(run):
  work, step1, step1_hashes = run
  held = loop.acquire_lock(work)  # this process plays the run that is using the workdir
  try:
    before = file_hashes(work)
    with pytest.raises(WorkdirLockedError, match=f"in use by another training run \\(host {socket.gethostname()}, "
                                                 f"pid {os.getpid()}, started {held['started']}\\)"):
      train(tok_config(), work)
    assert file_hashes(work) == before
  finally:
    loop.release_lock(work, held)
  assert not os.path.exists(os.path.join(work, loop.LOCK_FILE))


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
  work = str(tmp_path / "w")
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  os.makedirs(work)
  path = os.path.join(work, loop.LOCK_FILE)
  stale = {"host": socket.gethostname(), "pid": gone.pid, "process_start": "1", "started": "yesterday"}
  with open(path, "w") as f:
    json.dump(stale, f)
  mine = loop.acquire_lock(work)
  assert f"taking over the lock of {work} from host {socket.gethostname()}, pid {gone.pid}" in capsys.readouterr().out
  with open(path) as f:
    assert json.load(f) == mine
  # a lock from another host cannot be proven stale: refused, unless explicitly broken
  loop.release_lock(work, mine)
  elsewhere = dict(stale, host="some-other-host")
  with open(path, "w") as f:
    json.dump(elsewhere, f)
  with pytest.raises(WorkdirLockedError, match="host some-other-host, pid .* pass --break_lock"):
    loop.acquire_lock(work)
  assert loop.acquire_lock(work, break_lock=True)["pid"] == os.getpid()
  assert sorted(os.listdir(work)) == [loop.LOCK_FILE]  # no stale or temporary copies left


# ----------------------------------------------------------------------------------------- 9. short output


def test_falling_back_from_an_unverifiable_step_prints_a_few_lines(run, capfd):
  """A step from before the manifests, truncated: Orbax's failed read would print ~40k traceback lines."""
  work, step1, step1_hashes = run
  bad = os.path.join(work, "checkpoints", "2")
  os.remove(os.path.join(bad, checkpoints.MANIFEST))
  for root, _, names in os.walk(os.path.join(bad, "state")):
    for name in names:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(0)
  capfd.readouterr()
  manager = checkpoints.make_manager(os.path.join(work, "checkpoints"), async_save=False)
  step, _, _ = checkpoints.restore_latest(manager, None)
  manager.close()
  out, err = capfd.readouterr()
  lines = (out + err).strip().splitlines()
  assert step == 1
  assert len(lines) <= 4, "\n".join(lines[:40])
  assert f"WARNING: checkpoint {bad} cannot be restored" in out
  assert file_hashes(step1) == step1_hashes


def _library_noise():
  """One of each kind a failed Orbax read or write prints (see checkpoints.quiet_library_errors)."""
  logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=ValueError("from a read task"))
  logging.getLogger("absl").error("_SignalingThread.run() raised", exc_info=ValueError("from a writer thread"))
  sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)  # as a callback thread's PyErr_Print

  class Abandoned:
    def __del__(self):
      raise ValueError("from an abandoned coroutine")

  Abandoned()
  thread = threading.Thread(target=lambda: 1 / 0)
  thread.start()
  thread.join()


def test_library_noise_is_silenced_around_a_restore_and_back_after(monkeypatch, capfd):
  for module, name in ((sys, "unraisablehook"), (sys, "excepthook"), (threading, "excepthook")):
    monkeypatch.setattr(module, name, getattr(module, f"__{name}__"))  # as outside pytest
  handler = logging.StreamHandler(sys.stderr)
  logging.getLogger().addHandler(handler)
  try:
    capfd.readouterr()
    with checkpoints.quiet_library_errors():
      _library_noise()
    assert capfd.readouterr().err == ""
    _library_noise()
    err = capfd.readouterr().err
    for text in ("never retrieved", "writer thread", "Event loop is closed", "abandoned coroutine", "ZeroDivision"):
      assert text in err
    # the command line's process-wide filter drops only the library's kinds
    checkpoints.filter_library_noise()
    sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
    sys.excepthook(KeyError, KeyError("ours"), None)
    assert "Event loop" not in (err := capfd.readouterr().err) and "KeyError: 'ours'" in err
  finally:
    logging.getLogger().removeHandler(handler)
