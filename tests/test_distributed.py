"""Multi-process start-up and data layout: error paths, and a real 2-process CPU job equal to 1 process.

The 2-process job runs through ``launch/local_multiprocess.sh`` (2 processes x 2
simulated CPU devices, joined by ``maskbit_jax.distributed`` over localhost): 3
stage-II train steps of ``generator_tiny`` on a fixed global batch assembled from
per-process halves, then a class-balanced generator evaluation of 5 images.
This file is also the worker (``python tests/test_distributed.py worker ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "local_multiprocess.sh"
TINY = str(REPO / "configs/generator_tiny.py")
TINY_OVERRIDES = ["--config.lr_scheduler.params.warmup_steps=1", "--config.optimizer.params.learning_rate=0.003"]
GLOBAL_BATCH = 8
TRAIN_STEPS = 3
TRAIN_MESH = {"data": 2, "fsdp": 2}  # fsdp inside a process, data across the two
EVAL_IMAGES = 5  # shards of 2 and 3 over two processes: an uneven split with an empty padded batch
EVAL_BATCH = 2
FEATURE_DIM = 8
GATHER_ITEMS, GATHER_BATCH = 7, 2  # 4 batches, the last one short: 2 steps on each process


# -- the work both the 2-process job and the in-process reference do ---------------------


def global_train_batches(bits: int, grid: int, nclass: int) -> list[dict]:
  rng = np.random.default_rng(7)
  return [{"tokens": rng.integers(0, 2**bits, (GLOBAL_BATCH, grid, grid)).astype(np.int32),
           "label": rng.integers(0, nclass, (GLOBAL_BATCH,)).astype(np.int32)} for _ in range(TRAIN_STEPS)]


def run_train_steps(devices, process_index: int, process_count: int, checkpoint_dir: str | None = None
                    ) -> tuple[list[float], dict]:
  """3 jitted, sharded stage-II steps from a seeded init; returns the losses and the final params (numpy).

  With ``checkpoint_dir`` the final train state is saved there (all processes together, Orbax).
  """
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  import maskbit_jax
  from maskbit_jax import distributed, sharding
  from maskbit_jax.generator import generator_fields
  from maskbit_jax.models.maskbit_transformer import build_generator_module, init_generator_params
  from maskbit_jax.train.generator_step import MLMSettings, init_train_state, make_jitted_step
  from maskbit_jax.train.optim import make_optimizer

  cfg = maskbit_jax.load_config(TINY, TINY_OVERRIDES)
  module = build_generator_module(generator_fields(cfg))
  tx = make_optimizer(cfg, kind="mlm")
  mesh = sharding.create_mesh(TRAIN_MESH, devices)
  step, state_sh, batch_sh = make_jitted_step(module, tx, MLMSettings.from_config(cfg), mesh)
  init = lambda: init_train_state(module, tx, init_generator_params(module, jax.random.key(0)), jax.random.key(1))
  state = jax.jit(init, out_shardings=state_sh)()
  rows = distributed.check_global_batch(GLOBAL_BATCH, process_count, len(devices) // process_count)
  losses = []
  grid = int(module.seq_len ** 0.5)
  for batch in global_train_batches(module.token_size, grid, module.nclass):
    mine = jax.tree.map(lambda x: x[process_index * rows:(process_index + 1) * rows], batch)
    with jax.set_mesh(mesh):
      state, metrics = step(state, distributed.global_batch_from_local(mine, mesh, batch_sh))
    losses.append(float(metrics["mlm_loss"]))
  if checkpoint_dir is not None:
    from maskbit_jax.train import checkpoints

    manager = checkpoints.make_manager(checkpoint_dir, save_every=1)
    checkpoints.save(manager, TRAIN_STEPS, state, {"written_by_processes": process_count})
    manager.wait_until_finished()
    manager.close()
  replicated = jax.jit(lambda p: p, out_shardings=NamedSharding(mesh, PartitionSpec()))(state.params)
  flat = jax.tree_util.tree_flatten_with_path(replicated)[0]
  return losses, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


class _FakeInception:
  """Features = one-hot of the image's first byte (the class label the fake sampler painted)."""

  def apply(self, variables, images_u8):
    import jax
    import jax.numpy as jnp

    del variables
    first = images_u8[:, 0, 0, 0].astype(jnp.int32)
    return {"2048": jax.nn.one_hot(first, FEATURE_DIM, dtype=jnp.float32),
            "logits_unbiased": jnp.zeros((images_u8.shape[0], 10), jnp.float32)}


def _fake_sample(gen, tok, labels, key, **settings):
  """Images whose every pixel encodes the label: uint8 conversion gives the label back exactly."""
  import jax.numpy as jnp

  del tok, key, settings
  side = gen.module.img_size
  value = (labels.astype(jnp.float32) + 0.5) / 255.0
  return {"images": jnp.broadcast_to(value[:, None, None, None], (labels.shape[0], side, side, 3))}


def run_generator_eval(num_images: int, batch_size: int, samples_npz: str | None = None, *, patch_sample=True):
  """``evaluate_generator`` with a painted-label sampler and a one-hot feature net; returns (result, merged stats).

  ``patch_sample=False``: the caller has put ``_fake_sample`` in place already. Threads must not patch it each:
  overlapping ``mock.patch`` exits restore each other's fakes and leave one behind for later tests.
  """
  import contextlib
  from types import SimpleNamespace
  from unittest import mock

  from maskbit_jax.evaluation import runs as evaluate
  from maskbit_jax.evaluation import accumulator

  merged = []
  real_merge = accumulator.allgather_merge

  def recording_merge(acc):
    out = real_merge(acc)
    merged.append(out)
    return out

  gen = SimpleNamespace(num_classes=1000, module=SimpleNamespace(img_size=4))
  fake = mock.patch("maskbit_jax.sampling.api.sample", _fake_sample) if patch_sample else contextlib.nullcontext()
  with fake, mock.patch.object(accumulator, "allgather_merge", recording_merge):
    result = evaluate.evaluate_generator(gen, None, num_images=num_images, batch_size=batch_size, seed=0,
                                         inception=(_FakeInception(), {}), samples_npz=samples_npz, progress=False)
  return result, merged[0]


def worker_main(argv) -> int:
  from maskbit_jax import distributed

  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  distributed.add_distributed_args(p)
  args = p.parse_args(argv)
  plan = distributed.initialize_from_args(args)
  import jax

  out = pathlib.Path(args.out)
  losses, params = run_train_steps(jax.devices(), jax.process_index(), jax.process_count(),
                                   checkpoint_dir=str(out / "checkpoints"))
  if distributed.is_main_process():
    np.savez(out / "params.npz", **params)
  result, stats = run_generator_eval(EVAL_IMAGES, EVAL_BATCH, str(out / "samples.npz"))
  from maskbit_jax import sharding

  # GATHER_ITEMS items in batches of GATHER_BATCH over the processes (the sample and reconstruct CLIs' split)
  ids = distributed.process_batch_ids(-(-GATHER_ITEMS // GATHER_BATCH), jax.process_index(), jax.process_count())
  batches = [dict(item=np.arange(i * GATHER_BATCH, (i + 1) * GATHER_BATCH), process=np.full(GATHER_BATCH,
                                                                                           jax.process_index()))
             for i in ids]
  gathered = distributed.gather_batches(batches, GATHER_ITEMS)
  hybrid = sharding.create_mesh({"fsdp": -1}, dcn_shape={"data": 2})  # processes as the DCN granules
  record = dict(plan=plan.mode, process_index=jax.process_index(), process_count=jax.process_count(),
                device_count=jax.device_count(), local_device_count=jax.local_device_count(), losses=losses,
                eval_num_images=result["num_images"], eval_feature_totals=stats.total.tolist(),
                eval_count=int(stats.count), gathered_items=gathered["item"].tolist(),
                gathered_processes=gathered["process"].tolist(), hybrid_shape=dict(hybrid.shape),
                hybrid_processes=[[d.process_index for d in row] for row in hybrid.devices[:, :, 0]])
  (out / f"process_{jax.process_index()}.json").write_text(json.dumps(record))
  logging.getLogger("worker").info("done")
  return 0


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
  sys.path.insert(0, str(REPO))
  sys.exit(worker_main(sys.argv[2:]))


# -- tests -------------------------------------------------------------------------------

import proc_wait  # noqa: E402
import pytest  # noqa: E402

from maskbit_jax import distributed  # noqa: E402
from maskbit_jax.distributed import LaunchPlan, plan_launch  # noqa: E402

SLURM_ENV = dict(SLURM_JOB_ID="17", SLURM_STEP_NODELIST="node[1-2]", SLURM_NTASKS="4", SLURM_PROCID="2",
                 SLURM_LOCALID="0")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",) and not k.startswith(("SLURM_", "OMPI_"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), **extra)
  return env


def run_while_progressing(cmd: list[str], watch: pathlib.Path, *, stall_s: float = proc_wait.STALL_S,
                          **kwargs) -> subprocess.CompletedProcess:
  """The launched job, waited for as long as it progresses (its output, the logs under ``watch``, or its
  processes' CPU time; ``proc_wait``); a job stalled for ``stall_s`` is stopped and the test fails naming it."""
  try:
    return proc_wait.run(cmd, watch=watch, stall_s=stall_s, **kwargs)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{cmd[:6]}... made no progress (no output, no CPU time) for {stall_s:.0f} s; logs in {watch}")


# plans (pure: nothing connects)

def test_single_process_without_flags_or_environment_does_nothing(monkeypatch):
  plan = plan_launch(environ={}, tpu_vm=False)
  assert plan == LaunchPlan("single") and not plan.is_distributed
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
  assert distributed.initialize(environ={}) == LaunchPlan("single")
  assert plan_launch(num_processes=1, environ={}, tpu_vm=False).mode == "single"


def test_explicit_flags_and_cluster_detection():
  plan = plan_launch("localhost:1234", 2, 1, environ={}, tpu_vm=False)
  assert plan == LaunchPlan("explicit", "localhost:1234", 2, 1, "flags")
  slurm = plan_launch(environ=SLURM_ENV, tpu_vm=False)
  assert (slurm.mode, slurm.num_processes, slurm.process_id, slurm.source) == ("cluster", 4, 2, "SLURM")
  ompi = plan_launch(environ=dict(OMPI_MCA_orte_hnp_uri="1.0;tcp://10.0.0.1:5", OMPI_COMM_WORLD_SIZE="3",
                                  OMPI_COMM_WORLD_RANK="1"), tpu_vm=False)
  assert (ompi.mode, ompi.num_processes, ompi.process_id) == ("cluster", 3, 1)
  assert plan_launch(environ=dict(SLURM_ENV, SLURM_NTASKS="1", SLURM_PROCID="0"), tpu_vm=False).mode == "single"
  assert plan_launch(environ={}, tpu_vm=True) == LaunchPlan("cluster", source="Cloud TPU")
  assert plan_launch(environ={"MASKBIT_DISTRIBUTED": "on"}, tpu_vm=False).mode == "cluster"
  assert plan_launch(environ={"MASKBIT_DISTRIBUTED": "off"}, tpu_vm=True).mode == "single"
  partial = plan_launch(num_processes=4, environ={"MASKBIT_DISTRIBUTED": "on"}, tpu_vm=False)
  assert (partial.mode, partial.num_processes, partial.process_id) == ("cluster", 4, None)
  assert plan_launch(num_processes=4, environ={}, tpu_vm=True) == LaunchPlan("cluster", None, 4, None, "Cloud TPU")
  assert plan_launch("[::1]:99", 2, 0, environ={}).coordinator_address == "[::1]:99"


def test_mismatched_process_count_is_a_value_error_before_connecting():
  with pytest.raises(ValueError, match=r"--num_processes 2 does not match the 4 processes SLURM started"):
    plan_launch(num_processes=2, environ=SLURM_ENV)
  with pytest.raises(ValueError, match=r"--process_id 0 does not match this process's SLURM rank \(SLURM_PROCID=2\)"):
    plan_launch(process_id=0, environ=SLURM_ENV)
  with pytest.raises(ValueError, match="MASKBIT_DISTRIBUTED=off but --num_processes 4"):
    plan_launch(num_processes=4, environ={"MASKBIT_DISTRIBUTED": "off"})
  with pytest.raises(ValueError, match=r"--coordinator_address, --process_id missing"):
    plan_launch(num_processes=2, environ={}, tpu_vm=False)
  with pytest.raises(ValueError, match=r"--num_processes must be >= 1, got 0"):
    plan_launch("localhost:1", 0, 0, environ={})


def test_bad_process_id_is_a_value_error_before_connecting():
  with pytest.raises(ValueError, match=r"--process_id 2 is out of range for --num_processes 2 \(ids are 0..1\)"):
    distributed.initialize("localhost:1", 2, 2, environ={})
  with pytest.raises(ValueError, match=r"--process_id must be >= 0, got -1"):
    distributed.initialize("localhost:1", 2, -1, environ={})
  with pytest.raises(ValueError, match="--process_id must be an integer"):
    plan_launch("localhost:1", 2, "1", environ={})


def test_bad_address_and_switch_are_named():
  for address, message in (("localhost", "must be HOST:PORT"), (":80", "has no host"),
                           ("h:http", "port 'http' is not a number"), ("h:70000", "outside 1..65535")):
    with pytest.raises(ValueError, match=message):
      plan_launch(address, 2, 0, environ={})
  with pytest.raises(ValueError, match="MASKBIT_DISTRIBUTED='maybe': use auto, on or off"):
    plan_launch(environ={"MASKBIT_DISTRIBUTED": "maybe"})


def test_unreachable_coordinator_and_missing_peer_fail_clearly_within_bounded_time():
  """Process 1 with nobody listening raises; process 0 whose peer never comes exits via the watchdog."""
  port = _free_port()
  code = ("import sys; from maskbit_jax import distributed; "
          "distributed.initialize('localhost:{port}', 2, {pid}, timeout_s=2)")
  start = time.monotonic()
  procs = {pid: subprocess.Popen([sys.executable, "-c", code.format(port=port + pid, pid=pid)], env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
           for pid in (1, 0)}
  outs = {pid: p.communicate(timeout=90) for pid, p in procs.items()}
  elapsed = time.monotonic() - start
  assert procs[1].returncode != 0
  assert "CoordinatorUnreachableError" in outs[1][1]
  assert f"coordinator localhost:{port + 1} did not accept a connection within 2 s" in outs[1][1]
  assert procs[0].returncode == distributed.EXIT_JOIN_TIMEOUT, outs[0][1][-2000:]
  assert "process 0 of 2 could not join the job" in outs[0][1]
  assert elapsed < 60, f"took {elapsed:.0f} s"


def test_a_launched_job_is_stopped_when_it_stops_progressing_not_when_it_is_slow(tmp_path):
  with pytest.raises(pytest.fail.Exception, match=r"made no progress \(no output, no CPU time\) for"):
    run_while_progressing(["sleep", "600"], tmp_path / "logs", stall_s=1)
  assert proc_wait.cpu_seconds_of_tree(os.getpid()) > 0


def test_check_global_batch():
  assert distributed.check_global_batch(64, 4, 8) == 16
  with pytest.raises(ValueError, match=r"global batch 60 does not divide over 32 devices \(4 processes x 8 local "
                                       r"devices\); use a multiple of 32, e.g. 32 or 64"):
    distributed.check_global_batch(60, 4, 8)
  with pytest.raises(ValueError, match="use a multiple of 16, e.g. 16$"):
    distributed.check_global_batch(3, 2, 8)
  with pytest.raises(ValueError, match="global batch size must be >= 1"):
    distributed.check_global_batch(0, 1, 1)


def test_global_batch_from_local_single_process():
  import jax

  from maskbit_jax import sharding

  mesh = sharding.create_mesh({"data": 2, "fsdp": 4})
  batch = {"tokens": np.arange(8 * 3).reshape(8, 3).astype(np.int32), "label": np.arange(8, dtype=np.int32)}
  out = distributed.global_batch_from_local(batch, mesh)
  assert out["tokens"].shape == (8, 3) and out["tokens"].sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_array_equal(np.asarray(out["tokens"]), batch["tokens"])
  one = distributed.global_batch_from_local(batch, mesh, sharding.batch_sharding(mesh, 1))
  np.testing.assert_array_equal(np.asarray(one["label"]), batch["label"])
  with pytest.raises(ValueError, match=r"\['label'\]: 6 local rows do not split over this process's 8 batch shards"):
    distributed.global_batch_from_local({"label": np.zeros(6, np.int32)}, mesh)
  with pytest.raises(ValueError, match="disagree on the local batch size"):
    distributed.global_batch_from_local({"a": np.zeros(8), "b": np.zeros(16)}, mesh)
  with pytest.raises(ValueError, match="is a scalar"):
    distributed.global_batch_from_local({"a": np.zeros(())}, mesh)
  assert jax.device_count() == 8


def test_cli_flags_and_logging_levels():
  p = distributed.add_distributed_args(argparse.ArgumentParser())
  args = p.parse_args(["--coordinator_address", "h:1", "--num_processes", "2", "--process_id", "1"])
  assert (args.coordinator_address, args.num_processes, args.process_id) == ("h:1", 2, 1)
  assert args.distributed_timeout_s == distributed.DEFAULT_TIMEOUT_S
  root = logging.getLogger()
  saved = root.level, list(root.handlers)
  try:
    distributed.setup_logging(process_index=1, process_count=2)
    assert root.level == logging.WARNING
    distributed.setup_logging(process_index=0, process_count=2)
    assert root.level == logging.INFO
    assert len(root.handlers) == 1 and root.handlers[0]._maskbit_distributed
  finally:
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


def test_local_launcher_stops_everything_when_one_process_fails(tmp_path):
  code = ("import sys, time; i = int(sys.argv[sys.argv.index('--process_id') + 1]); "
          "time.sleep(60) if i == 0 else sys.exit(3)")
  start = time.monotonic()
  run = subprocess.run(["bash", str(LAUNCH), "-q", "-n", "2", "-d", "1", "-p", "1", "-l", str(tmp_path), "--",
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
  assert run.returncode == 3, run.stderr
  assert "process 1 failed with status 3" in run.stderr
  assert time.monotonic() - start < 30


# generator evaluation: every image once, whatever the process count

def test_generation_batches_cover_every_image_once_with_more_processes_than_images():
  from maskbit_jax.data.sources import num_eval_batches, shard_indices
  from maskbit_jax.evaluation.runs import generation_batch_indices

  for num, count, batch in ((2, 3, 4), (5, 2, 2), (7, 8, 1), (11, 3, 4)):
    seen = []
    for pid in range(count):
      mine = shard_indices(num, pid, count)
      for b in range(num_eval_batches(num, batch, count)):
        padded, valid = generation_batch_indices(mine, b, batch)
        assert padded.shape == (batch,) and 0 <= padded.min() and padded.max() < num
        seen.extend(padded[:valid].tolist())
    assert sorted(seen) == list(range(num)), (num, count, batch)


def test_generator_evaluation_with_more_processes_than_images(monkeypatch):
  """3 simulated processes (threads; an in-memory all-gather), 2 images: process 2 has none, still runs every
  batch and every merge, and each image is counted exactly once."""
  import threading

  import jax

  from maskbit_jax.evaluation import accumulator

  count, me, barrier, slots = 3, threading.local(), threading.Barrier(3, timeout=60), {}

  def allgather_merge(acc):
    me.calls = getattr(me, "calls", 0) + 1
    slots[me.calls, me.pid] = acc
    barrier.wait()
    merged = slots[me.calls, 0]
    for pid in range(1, count):
      merged = merged.merge(slots[me.calls, pid])
    return merged

  import importlib

  sample_module = importlib.import_module("maskbit_jax.sampling.api")  # the module; maskbit_jax.sample is the function

  original_sample = sample_module.sample
  monkeypatch.setattr(sample_module, "sample", _fake_sample)  # once, for all threads
  monkeypatch.setattr(accumulator, "allgather_merge", allgather_merge)
  monkeypatch.setattr(jax, "process_count", lambda: count)
  monkeypatch.setattr(jax, "process_index", lambda: me.pid)
  results, errors = {}, []

  def one(pid):
    me.pid = pid
    try:
      results[pid] = run_generator_eval(2, jax.local_device_count(), patch_sample=False)
    except BaseException as e:  # reported below; the barrier is broken so the others stop too
      errors.append((pid, e))
      barrier.abort()

  threads = [threading.Thread(target=one, args=(pid,)) for pid in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(120)
  assert not errors, errors
  monkeypatch.undo()
  assert sample_module.sample is original_sample  # nothing left behind for the tests after this one
  for pid in range(count):
    result, stats = results[pid]
    assert result["complete"] and result["num_images"] == stats.count == 2
    np.testing.assert_array_equal(stats.total, np.eye(FEATURE_DIM)[:2].sum(0))


# the real 2-process job

@pytest.fixture(scope="module")
def two_process_job(tmp_path_factory):
  out = tmp_path_factory.mktemp("two_process")
  cmd = ["bash", str(LAUNCH), "-q", "-n", "2", "-d", "2", "-l", str(out / "logs"), "--",
         sys.executable, str(pathlib.Path(__file__).resolve()), "worker", "--out", str(out),
         "--distributed_timeout_s", "60"]
  run = run_while_progressing(cmd, out / "logs", env=_env(), cwd=REPO)
  logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((out / "logs").glob("*.log")))
  assert run.returncode == 0, f"{run.stderr}\n{logs}"
  records = [json.loads((out / f"process_{i}.json").read_text()) for i in range(2)]
  return out, records


def test_two_processes_train_like_one_process_with_four_devices(two_process_job):
  import jax

  out, records = two_process_job
  for i, r in enumerate(records):
    assert (r["plan"], r["process_index"], r["process_count"]) == ("explicit", i, 2)
    assert (r["device_count"], r["local_device_count"]) == (4, 2)
  assert records[0]["losses"] == records[1]["losses"]
  losses, params = run_train_steps(jax.devices()[:4], 0, 1)
  np.testing.assert_allclose(records[0]["losses"], losses, rtol=1e-5)
  with np.load(out / "params.npz") as multi:
    assert sorted(multi.files) == sorted(params)
    # atol: parameters that start at zero (the attention in-projection bias, as torch's MHA) and see
    # gradients at rounding level take Adam steps that follow the rounding, which the two reduction
    # orders (2 processes, 1 process) do not share; 1e-6 of them was seen.
    for k, v in params.items():
      np.testing.assert_allclose(multi[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
  checksum = lambda tree: sum(float(np.abs(v).astype(np.float64).sum()) for v in tree.values())
  with np.load(out / "params.npz") as multi:
    assert checksum(dict(multi)) == pytest.approx(checksum(params), rel=1e-6)


def test_checkpoint_of_two_processes_restores_in_one_process_on_another_mesh(two_process_job):
  """The state the 2 processes (mesh data2 x fsdp2 over 4 devices) saved restores in this single process
  onto 8 devices with fsdp=8 and onto 1 device, and holds the same parameters."""
  import jax

  import maskbit_jax
  from maskbit_jax import sharding
  from maskbit_jax.generator import generator_fields
  from maskbit_jax.models.maskbit_transformer import build_generator_module, init_generator_params
  from maskbit_jax.train import checkpoints
  from maskbit_jax.train.generator_step import TrainState, init_train_state, state_shardings
  from maskbit_jax.train.optim import make_optimizer

  out, _ = two_process_job
  with np.load(out / "params.npz") as f:
    expected = dict(f)
  cfg = maskbit_jax.load_config(TINY, TINY_OVERRIDES)
  module = build_generator_module(generator_fields(cfg))
  tx = make_optimizer(cfg, kind="mlm")
  for shape, devices in (({"fsdp": 8}, jax.devices()), ({"data": 1}, jax.devices()[:1])):
    mesh = sharding.create_mesh(shape, devices)
    target = state_shardings(module, tx, mesh)
    abstract = jax.eval_shape(lambda: init_train_state(module, tx, init_generator_params(module, jax.random.key(0)),
                                                       jax.random.key(1)))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, target)
    manager = checkpoints.make_manager(str(out / "checkpoints"))
    step, state, meta = checkpoints.restore_latest(manager, abstract)
    manager.close()
    assert step == TRAIN_STEPS and meta == {"written_by_processes": 2}
    assert isinstance(state, TrainState) and int(state.step) == TRAIN_STEPS
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    for (path, value), want in zip(flat, jax.tree.leaves(target.params)):
      assert value.sharding == want  # placed on this mesh by the rules table
      np.testing.assert_array_equal(np.asarray(value), expected[jax.tree_util.keystr(path)])


def test_two_process_generator_evaluation_counts_every_image_once(two_process_job):
  out, records = two_process_job
  expected = np.eye(FEATURE_DIM)[:EVAL_IMAGES].sum(0)  # the fake features are one-hot of the class label = index
  for r in records:
    assert r["eval_num_images"] == r["eval_count"] == EVAL_IMAGES
    np.testing.assert_array_equal(r["eval_feature_totals"], expected)
  with np.load(out / "samples.npz") as f:  # one ADM file, every process's images in class-balanced order
    assert f["arr_0"][:, 0, 0, 0].tolist() == list(range(EVAL_IMAGES))
  assert not list(out.glob("samples.npz.process*"))


def test_two_processes_gather_their_batches_in_item_order_and_form_a_hybrid_mesh(two_process_job):
  _, records = two_process_job
  for r in records:
    assert r["gathered_items"] == list(range(GATHER_ITEMS))
    assert r["gathered_processes"] == [0, 0, 1, 1, 0, 0, 1]  # batch i ran on process i % 2
    assert r["hybrid_shape"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert r["hybrid_processes"] == [[0, 0], [1, 1]]  # the DCN axis (data) is the process


# the training CLI end to end in 2 processes: grids and exports gather what spans both processes

def _launch_train(tmp_path, name: str, *overrides: str) -> pathlib.Path:
  workdir, logs = tmp_path / name, tmp_path / f"{name}_logs"
  cmd = ["bash", str(LAUNCH), "-q", "-n", "2", "-d", "2", "-l", str(logs), "--",
         sys.executable, "-m", "maskbit_jax.train", "--workdir", str(workdir), *overrides,
         "--config.training.max_train_steps=2", "--config.training.per_gpu_batch_size=2",
         "--config.experiment.save_every=2", "--config.experiment.log_every=1",
         "--config.experiment.generate_every=1", "--config.training.num_generated_images=4"]
  run = run_while_progressing(cmd, logs, env=_env(), cwd=REPO)
  text = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))
  assert run.returncode == 0, f"{run.stderr}\n{text}"
  assert sorted(p.name for p in (workdir / "images").glob("*.png"))[-1].endswith("00000002.png")
  return workdir


def _assert_export_equals_checkpoint(workdir: pathlib.Path, name: str) -> None:
  """The export (written by process 0 from weights gathered over both processes) is the last checkpoint's."""
  import orbax.checkpoint as ocp

  from maskbit_jax import checkpointing

  import jax

  exported = checkpointing.load_params(workdir / "export" / name)
  # as host arrays: the checkpoint's 2-process device topology does not exist in this process
  path = str(workdir / "checkpoints" / "2" / "state")
  reader = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), reader.metadata(path).item_metadata.tree)
  state = reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  # the EMA copy where the recipe keeps one (MaskBit stages), else the trained weights (BAR)
  flat_saved = dict(jax_flatten(state["ema_params"])) or dict(jax_flatten(state["params"]))
  assert len(flat_saved) == len(jax_flatten(exported))
  for key, value in jax_flatten(exported):
    np.testing.assert_array_equal(value, flat_saved[key], err_msg=key)


def jax_flatten(tree):
  import jax

  return [(jax.tree_util.keystr(k), np.asarray(v)) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


@pytest.fixture(scope="module")
def two_process_tokenizer(tmp_path_factory):
  """Stage I in 2 processes x 2 devices on an fsdp mesh: the weights are sharded over both processes."""
  tmp = tmp_path_factory.mktemp("mp_cli")
  workdir = _launch_train(tmp, "tok", "--config", str(REPO / "configs/tokenizer_tiny.py"),
                          "--config.runtime.mesh.data=2", "--config.runtime.mesh.fsdp=2",
                          "--config.experiment.eval_images=8", "--config.losses.discriminator_start=1")
  return workdir


def test_two_process_training_cli_writes_grids_and_exports_both_stages(two_process_tokenizer, tmp_path):
  import maskbit_jax

  _assert_export_equals_checkpoint(two_process_tokenizer, "tokenizer")
  tok = maskbit_jax.load_tokenizer(str(REPO / "configs/tokenizer_tiny.py"), str(two_process_tokenizer / "export/tokenizer"))
  gen_dir = _launch_train(tmp_path, "gen", "--config", str(REPO / "configs/generator_tiny.py"),
                          f"--config.experiment.vqgan_checkpoint={two_process_tokenizer / 'export/tokenizer'}")
  _assert_export_equals_checkpoint(gen_dir, "generator")
  gen = maskbit_jax.load_generator(str(REPO / "configs/generator_tiny.py"), str(gen_dir / "export/generator"))
  import jax

  out = maskbit_jax.sample(gen, tok, [0, 1], jax.random.key(0), num_steps=2)
  from maskbit_jax.models.tokenizer import latent_stride_of

  cfg = maskbit_jax.load_config(str(REPO / "configs/tokenizer_tiny.py"))
  side = cfg.dataset.preprocessing.resolution // latent_stride_of(cfg.model.vq_model)
  assert out["tokens"].shape == (2, side, side)


@pytest.mark.slow
def test_two_process_bar_training_cli_writes_its_grid_and_export(two_process_tokenizer, tmp_path):
  bar_dir = _launch_train(tmp_path, "bar", "--config", str(REPO / "configs/bar_tiny.py"),
                          f"--config.experiment.vqgan_checkpoint={two_process_tokenizer / 'export/tokenizer'}")
  _assert_export_equals_checkpoint(bar_dir, "bar_generator")


# the sample and reconstruct CLIs in 2 processes: one output folder, the same as one process's

def _launch_cli(tmp_path, name: str, processes: int, module: str, *args: str) -> pathlib.Path:
  out, logs = tmp_path / name, tmp_path / f"{name}_logs"
  cmd = ["bash", str(LAUNCH), "-q", "-n", str(processes), "-d", "2", "-l", str(logs), "--",
         sys.executable, "-m", module, "--out", str(out), *args]
  run = run_while_progressing(cmd, logs, env=_env(), cwd=REPO)
  text = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))
  assert run.returncode == 0, f"{run.stderr}\n{text}"
  return out


def _assert_same_folder(one: pathlib.Path, two: pathlib.Path, npz: str, keys: tuple[str, ...]) -> None:
  assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
  with np.load(one / npz) as a, np.load(two / npz) as b:
    for k in keys:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for png in sorted(one.glob("*.png")):
    assert png.read_bytes() == (two / png.name).read_bytes(), png.name


@pytest.mark.slow
@pytest.mark.parametrize("cli", ["reconstruct", "sample"])
def test_two_process_cli_writes_one_folder_equal_to_one_process(tmp_path, cli):
  if cli == "reconstruct":  # 5 images in batches of 2: 3 batches over 2 processes, the last one short
    args = ("maskbit_jax.reconstruct", "--config", str(REPO / "configs/tokenizer_tiny.py"), "--random_init",
            "--images", "synthetic:5", "--num_images", "5", "--batch_size", "2")
    npz, keys = "tokens.npz", ("tokens", "names")
  else:
    args = ("maskbit_jax.sample", "--config", TINY, "--random_init", "--classes", "1,2,3,4,5", "--batch_size", "2",
            "--num_steps", "2")
    npz, keys = "tokens.npz", ("tokens", "labels")
  one = _launch_cli(tmp_path, "one", 1, *args)
  two = _launch_cli(tmp_path, "two", 2, *args)
  _assert_same_folder(one, two, npz, keys)
  summary = json.loads((two / "summary.json").read_text())
  assert summary["images"] == 5
