"""Stopping a run on a signal, agreed by every process: which step all of them save, and the exit code.

A SIGTERM or SIGINT reaches one process (one preempted VM), or all of them at
different steps (``scancel``). ``StopRequest`` turns it into a local flag;
``StopAgreement`` makes the flags one decision: at every step each process
posts its flag into a tiny all-reduce (max over every device of the mesh) and
reads the result posted ``lag`` steps earlier. Every process reads the result
of the same step, so every process stops after the same step and joins the
same collective save. The result read was computed ``lag`` steps ago, so
reading it does not hold up the asynchronous dispatch of the steps.

jax's preemption service (``multihost_utils.reached_preemption_sync_point``,
behind orbax's ``CheckpointManager.reached_preemption``) is not used: it only
hears SIGTERM, through a handler of its own in C++ that a Python handler
replaces (and Ctrl-C on one process would still hang the others), and it is
absent in a single process. One all-reduce serves both signals and every
process count, and its answer is fixed by the step, not by when a background
protocol runs.

After the save the command exits with ``EXIT_PREEMPTED`` on every process,
also on those that received no signal, so that schedulers requeue the job.
"""

from __future__ import annotations

import collections
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

EXIT_PREEMPTED = 143  # 128 + SIGTERM: stopped by a signal, the checkpoint of the stop step is saved
AGREEMENT_LAG = 2  # steps between posting the flags and reading their all-reduce


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps (then it saves and returns)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # a second signal: stop at once
      raise KeyboardInterrupt
    self.signum = signum
    print(f"received {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping", flush=True)

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      # None: the previous handler was not set from Python (jax's distributed runtime installs one in C++)
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    return False

  def __bool__(self) -> bool:
    return self.signum is not None


class StopAgreement:
  """``agreement(local_flag) -> bool``, called once per step by every process: True on every process at once.

  One process: the local flag itself. Several: the max of every process's flag
  of the call ``lag`` calls earlier (so a stop is agreed ``lag`` steps after
  the signal arrived, on every process after the same step).
  """

  def __init__(self, mesh, *, lag: int = AGREEMENT_LAG):
    if lag < 0:
      raise ValueError(f"lag must be >= 0, got {lag}")
    self.lag = lag
    self._single = jax.process_count() == 1
    self._mesh = mesh
    self._pending: collections.deque = collections.deque()
    if not self._single:
      self._flags_sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))  # one flag per device
      self._any = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

  def __call__(self, local_flag: bool) -> bool:
    if self._single:
      return bool(local_flag)
    local = np.full((len(self._mesh.local_devices),), int(bool(local_flag)), np.int32)
    flags = jax.make_array_from_process_local_data(self._flags_sharding, local, (self._mesh.size,))
    self._pending.append(self._any(flags))
    if len(self._pending) <= self.lag:
      return False
    return bool(np.asarray(self._pending.popleft().addressable_data(0)))
