"""The training loop shared by both stages: resume, data, steps, logging, images, checkpoints, preemption.

``train(cfg, workdir)`` runs (or resumes) the run in ``workdir``::

  workdir/config.json        the run's config (a different config in the same workdir is refused)
  workdir/checkpoints/<step> Orbax checkpoints: train state + data iterator position
  workdir/tensorboard/       metrics (clu writers; also printed)
  workdir/images/*.png       reconstruction (stage I) or sample (stage II) grids
  workdir/export/<stage>/    final weights, loadable by load_tokenizer / load_generator

A SIGTERM or SIGINT (a preempted TPU VM, ``scancel``, Ctrl-C) finishes the
current step, saves a checkpoint, waits for it to be complete and returns;
the next start resumes from it. Everything a step depends on (params,
optimizer and EMA state, LeCam state, step, PRNG key, data position) is in
the checkpoint, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from maskbit_jax import sharding
from maskbit_jax.train import checkpoints, observe
from maskbit_jax.train.tasks import make_task, stage_of, validate_common

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# Sections whose values define a run; a workdir refuses a config that differs in them. The run's
# length (max_train_steps) is among them: the learning-rate schedule is built on it. Cadence (log,
# save, sample, eval), --steps per invocation, data threads and the like may change between restarts.
RUN_DEFINING = ("model", "losses", "optimizer", "lr_scheduler", "training.per_gpu_batch_size",
                "training.gradient_accumulation_steps", "training.seed", "training.max_train_steps",
                "dataset.preprocessing", "dataset.source", "dataset.pretokenized", "runtime.dtype")


class RunMismatchError(ValueError):
  """The workdir holds a run of another config."""


def _lookup(tree: dict, dotted: str):
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def _flatten(value, prefix: str) -> dict:
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f"{prefix}.{k}"))
    return out
  return {prefix: value}


def run_differences(saved: dict, current: dict) -> list[str]:
  """``key: saved -> current`` for every run-defining value that differs."""
  diffs = []
  for key in RUN_DEFINING:
    a, b = _flatten(_lookup(saved, key), key), _flatten(_lookup(current, key), key)
    for k in sorted(set(a) | set(b)):
      if json.dumps(a.get(k), sort_keys=True, default=str) != json.dumps(b.get(k), sort_keys=True, default=str):
        diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
  return diffs


def check_workdir(workdir: str, cfg: ml_collections.ConfigDict, *, is_main: bool) -> None:
  """Writes ``config.json`` on the first start; once the run has a checkpoint, later starts must bring the
  same run-defining values. (A start that failed before its first checkpoint, say on a wrong data path,
  left nothing to protect: the next start's config replaces it.)"""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(json.dumps(cfg.to_dict(), default=str))
  if os.path.exists(path) and _has_checkpoint(workdir):
    with open(path) as f:
      saved = json.load(f)
    diffs = run_differences(saved, current)
    if diffs:
      raise RunMismatchError(f"{workdir} holds a run of another config ({len(diffs)} difference(s): "
                             + "; ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else "")
                             + "). Use a new --workdir; nothing in this one was changed.")
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(current, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _close_manager(manager) -> None:
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001 - the error that stopped the run is the one to report
    log.error("finishing the last checkpoint save failed: %s", e)
  manager.close()


def _has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir/checkpoints`` holds a finished step (Orbax's unfinished saves carry a suffix)."""
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


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
      signal.signal(s, handler)
    return False

  def __bool__(self) -> bool:
    return self.signum is not None


def make_mesh(cfg: ml_collections.ConfigDict):
  """The mesh of ``runtime.mesh`` over all devices, or the first ``runtime.num_devices`` of them."""
  runtime = cfg.get("runtime", None) or {}
  devices = jax.devices()
  num = int(runtime.get("num_devices", 0) or 0)
  if num < 0 or num > len(devices):
    raise ValueError(f"runtime.num_devices={num}: must be in [0, {len(devices)}] (0 = all devices)")
  if num and jax.process_count() > 1:
    raise ValueError("runtime.num_devices only applies to single-process runs")
  shape = runtime.get("mesh", None)
  shape = shape.to_dict() if hasattr(shape, "to_dict") else dict(shape or {"data": -1})
  return sharding.create_mesh(shape, devices[:num] if num else devices)


def _is_due(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


def train(cfg: ml_collections.ConfigDict, workdir: str, *, num_steps: int | None = None) -> dict:
  """Trains (or resumes) the run in ``workdir``; returns a summary dict.

  ``num_steps``: stop after this many steps in this invocation (the schedule
  still runs to ``training.max_train_steps``), e.g. to split a run into jobs.
  """
  if num_steps is not None and int(num_steps) < 1:
    raise ValueError(f"num_steps (--steps) = {num_steps}: must be >= 1, or left out to run to "
                     "training.max_train_steps")
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  stage = stage_of(cfg)
  validate_common(cfg)
  mesh = make_mesh(cfg)
  check_workdir(workdir, cfg, is_main=is_main)
  task = make_task(cfg, mesh, workdir)

  total = int(cfg.training.max_train_steps)
  exp = cfg.experiment
  save_every, log_every = int(exp.save_every), int(exp.log_every)
  generate_every, eval_every = int(exp.generate_every), int(exp.get("eval_every", 0))
  manager = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), save_every=save_every,
                                     keep=int(cfg.runtime.get("keep_checkpoints", 3)))
  writer = observe.make_writer(os.path.join(workdir, "tensorboard"), is_main=is_main)
  say = print if is_main else (lambda *a, **k: None)

  try:
    # the models' activation constraints (logical names) only bind inside the rules context
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      abstract = jax.eval_shape(task.init_state)  # traces only; compiles nothing
      abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                              task.state_shardings)
      dataset = task.dataset()
      data_iter = iter(dataset)
      restored = checkpoints.restore_latest(manager, abstract)
      if restored is None:
        state, start = task.init_state(), 0
        say(f"[{stage}] new run in {workdir}: {total} steps, global batch {task.global_batch} "
            f"({task.process_count} process(es), mesh {dict(mesh.shape)})")
      else:
        start, state, meta = restored
        if meta.get("data") is not None:
          data_iter.set_state(meta["data"])
        say(f"[{stage}] resumed {workdir} at step {start}/{total}")
      end = total if num_steps is None else min(total, start + int(num_steps))

      progress = observe.Progress(start, total, task.global_batch)
      history: list[dict] = []
      step = start
      summary: dict = {"stage": stage, "workdir": workdir, "start_step": start}
      with StopRequest() as stop:
        while step < end and not stop:
          batch = task.to_device(next(data_iter))
          state, metrics = task.step(state, batch, step)
          step += 1
          history.append(metrics)
          if _is_due(step, log_every) or step == end:
            values = observe.mean_metrics(jax.device_get(history))
            history = []
            values["learning_rate"] = task.learning_rate(step - 1)
            text, rates = progress.line(step, values, task.log_keys)
            values.update(rates)
            writer.write_scalars(step, values)
            say(f"[{stage}] {text}", flush=True)
            summary["last_metrics"] = values
            if not all(np.isfinite(v) for v in values.values()):
              raise FloatingPointError(f"non-finite metrics at step {step}: "
                                       + ", ".join(k for k, v in values.items() if not np.isfinite(v)))
          if _is_due(step, eval_every) or step == total:
            evaluation = task.evaluate(state)
            if evaluation:
              writer.write_scalars(step, evaluation)
              say(f"[{stage}] eval at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items()))
              summary["eval"] = evaluation
          if _is_due(step, generate_every) or step == total:
            images, labels, ncols = task.visualize(state)
            if is_main:
              summary["image_grid"] = observe.save_grid(workdir, "recon" if stage == "tokenizer" else "samples",
                                                        step, images, labels, ncols)
          checkpoints.save(manager, step, state, {"data": data_iter.get_state(), "stage": stage})
        if step > start and (stop or step == end) and manager.latest_step() != step:
          checkpoints.save(manager, step, state, {"data": data_iter.get_state(), "stage": stage}, force=True)
        manager.wait_until_finished()
      writer.flush()
      summary.update(end_step=step, stopped_by_signal=bool(stop), finished=step >= total)
      if step >= total:
        summary["export"] = task.export(state)  # every process: gathering sharded weights is collective
        if is_main:
          say(f"[{stage}] done: weights in {summary['export']}")
      elif stop:
        say(f"[{stage}] stopped at step {step}; checkpoint saved, run again to resume")
  finally:
    # Also when a step, the data or an evaluation raised: an asynchronous save still in flight is
    # finished (not left as a temporary folder) before the error reaches the user, and its threads do
    # not bury that error in tracebacks at interpreter exit.
    _close_manager(manager)
  return summary

