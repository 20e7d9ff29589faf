"""A signal to one process of two stops both after the same step (``maskbit_jax.train.preemption``).

Fast: two processes x 2 CPU devices run a loop of small collective steps with the
training loop's ``StopRequest`` + ``StopAgreement``; only process 1 gets the
SIGTERM. Slow: the training CLI, where both save the same step, exit with
``EXIT_PREEMPTED``, resume, and end with the state of an uninterrupted run, bit for bit.
This file is also the worker (``python tests/test_preemption.py worker ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER_MAX_STEPS = 2000


def worker_main(argv) -> int:
  import jax
  import jax.numpy as jnp

  from maskbit_jax import distributed, sharding
  from maskbit_jax.train.preemption import EXIT_PREEMPTED, StopAgreement, StopRequest

  p = argparse.ArgumentParser()
  distributed.add_distributed_args(p)
  args = p.parse_args(argv)
  distributed.initialize_from_args(args)
  mesh = sharding.create_mesh({"data": -1})
  x_sh = sharding.batch_sharding(mesh, 1)
  x = jax.make_array_from_process_local_data(x_sh, np.ones(jax.local_device_count(), np.float32))
  step_fn = jax.jit(lambda x: x + jnp.sum(x) * 0, out_shardings=x_sh)  # an all-reduce over both processes
  step, stopping = 0, False
  with StopRequest() as stop:
    agree = StopAgreement(mesh)
    while step < WORKER_MAX_STEPS and not stopping:
      x = step_fn(x)
      step += 1
      if step == 1:
        jax.block_until_ready(x)
        print("in the loop", flush=True)
      time.sleep(0.02)
      stopping = agree(bool(stop))
  print(json.dumps(dict(step=step, signalled=stop.signum, stopping=stopping)), flush=True)
  return EXIT_PREEMPTED if stopping else 0


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
  sys.path.insert(0, str(REPO))
  sys.exit(worker_main(sys.argv[2:]))


# -- tests -------------------------------------------------------------------------------

import pytest  # noqa: E402

from maskbit_jax.train.preemption import EXIT_PREEMPTED, StopAgreement  # noqa: E402


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONUNBUFFERED="1",
             PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
  return env


class _Job:
  """Two processes of ``cmd`` joined over localhost; their output lines are collected on threads."""

  def __init__(self, cmd: list[str]):
    port = _free_port()
    self.procs = [subprocess.Popen([*cmd, "--coordinator_address", f"localhost:{port}", "--num_processes", "2",
                                    "--process_id", str(i), "--distributed_timeout_s", "120"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
                  for i in range(2)]
    self.lines = [queue.Queue() for _ in self.procs]
    self.text = [[] for _ in self.procs]
    for proc, q in zip(self.procs, self.lines):
      threading.Thread(target=lambda p=proc, q=q: [*map(q.put, p.stdout), q.put(None)], daemon=True).start()

  def wait_for(self, i: int, needle: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      try:
        line = self.lines[i].get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        pytest.fail(f"process {i} ended before printing {needle!r}:\n{''.join(self.text[i])[-3000:]}")
      self.text[i].append(line)
      if needle in line:
        return
    self.kill()
    pytest.fail(f"process {i} did not print {needle!r} within {timeout_s:.0f} s")

  def finish(self, timeout_s: float = 600) -> tuple[list[int], list[str]]:
    for i, proc in enumerate(self.procs):
      try:
        proc.wait(timeout=timeout_s)
      except subprocess.TimeoutExpired:
        self.kill()
        pytest.fail(f"process {i} did not end within {timeout_s:.0f} s (a hang in a collective?)")
    for i, q in enumerate(self.lines):
      while (line := q.get()) is not None:
        self.text[i].append(line)
    return [p.returncode for p in self.procs], ["".join(t) for t in self.text]

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()


def test_one_process_decides_alone():
  import jax

  from maskbit_jax import sharding

  agree = StopAgreement(sharding.create_mesh({"data": -1}, jax.devices()[:1]))
  assert [agree(f) for f in (False, True, False)] == [False, True, False]
  with pytest.raises(ValueError, match="lag"):
    StopAgreement(None, lag=-1)


def test_sigterm_to_one_process_stops_both_after_the_same_step():
  job = _Job([sys.executable, str(pathlib.Path(__file__).resolve()), "worker"])
  try:
    for i in range(2):
      job.wait_for(i, "in the loop")
    job.procs[1].send_signal(signal.SIGTERM)  # process 0 receives nothing
    codes, texts = job.finish()
  finally:
    job.kill()
  results = [json.loads(t.strip().splitlines()[-1]) for t in texts]
  assert codes == [EXIT_PREEMPTED] * 2, texts
  assert results[0]["signalled"] is None and results[1]["signalled"] == signal.SIGTERM
  assert results[0]["step"] == results[1]["step"] < WORKER_MAX_STEPS
  assert "received SIGTERM" in texts[1] and "received" not in texts[0]


# -- the training CLI --------------------------------------------------------------------

TOTAL_STEPS = 8
TRAIN_ARGS = ["--config", str(REPO / "configs/tokenizer_tiny.py"), f"--config.training.max_train_steps={TOTAL_STEPS}",
              "--config.training.per_gpu_batch_size=2", "--config.experiment.save_every=1000",
              "--config.experiment.log_every=1", "--config.experiment.generate_every=1000",
              "--config.experiment.eval_every=0", "--config.experiment.eval_images=0",
              "--config.training.num_generated_images=2", "--config.runtime.mesh.data=2",
              "--config.runtime.mesh.fsdp=2"]


def _train(workdir: pathlib.Path, *, sigterm_process: int | None = None) -> tuple[list[int], list[str]]:
  job = _Job([sys.executable, "-m", "maskbit_jax.train", "--workdir", str(workdir), *TRAIN_ARGS])
  try:
    if sigterm_process is not None:
      job.wait_for(0, f"step 1/{TOTAL_STEPS}")  # process 0 logs; both are in the loop once step 1 is done
      job.procs[sigterm_process].send_signal(signal.SIGTERM)
    return job.finish()
  finally:
    job.kill()


def _state_arrays(step_dir: pathlib.Path) -> dict:
  import jax
  import orbax.checkpoint as ocp

  reader = ocp.PyTreeCheckpointer()
  path = str(step_dir / "state")
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), reader.metadata(path).item_metadata.tree)
  state = reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.mark.slow
def test_training_sigterm_to_one_process_saves_one_step_exits_143_and_resumes_bit_for_bit(tmp_path):
  work = tmp_path / "run"
  codes, texts = _train(work, sigterm_process=1)
  assert codes == [EXIT_PREEMPTED] * 2, "\n".join(t[-3000:] for t in texts)
  stopped = [int(t.split("stopped at step ")[1].split(";")[0]) for t in texts]
  assert stopped[0] == stopped[1] < TOTAL_STEPS
  assert max(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == stopped[0]

  codes, texts = _train(work)  # the resumed run, to the end
  assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
  assert f"resumed {work} at step {stopped[0]}/{TOTAL_STEPS}" in texts[0]

  straight = tmp_path / "straight"
  codes, texts = _train(straight)
  assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
  resumed, reference = (_state_arrays(w / "checkpoints" / str(TOTAL_STEPS)) for w in (work, straight))
  assert sorted(resumed) == sorted(reference)
  for key, value in reference.items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)
