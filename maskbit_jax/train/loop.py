"""The training loop shared by both stages: resume, data, steps, logging, images, checkpoints, preemption.

``train(cfg, workdir)`` runs (or resumes) the run in ``workdir``::

  workdir/config.json        the run's config, as first started (a different run in the same workdir is refused)
  workdir/train.lock         host, pid and start time of the run using the workdir (a second run is refused)
  workdir/checkpoints/<step> Orbax checkpoints: train state + data iterator position + integrity.json
  workdir/checkpoints_rejected/<step>  steps that failed verification or restore on resume, moved aside
  workdir/tensorboard/       metrics (clu writers; also printed), with the [tensorboard] extra installed
  workdir/metrics.jsonl      metrics without it, one JSON line per write (also printed)
  workdir/images/*.png       reconstruction (stage I) or sample (stage II) grids
  workdir/export/<stage>/    final weights, loadable by load_tokenizer / load_generator
  workdir/summary.json       the finished run's final evaluation, grid and export (what it printed last)

A SIGTERM or SIGINT (a preempted TPU VM, ``scancel``, Ctrl-C) to any process
stops every process after the same step (``preemption``), which saves a
checkpoint, waits for it to be complete and returns; the next start resumes
from it. Everything a step depends on (params,
optimizer and EMA state, LeCam state, step, PRNG key, data position) is in
the checkpoint, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from maskbit_jax import paths, sharding
from maskbit_jax.train import checkpoints, observe
from maskbit_jax.train.preemption import StopAgreement, StopRequest
from maskbit_jax.train.tasks import make_task, stage_of, validate_common
from maskbit_jax.train.tokenizer_step import GRAD_NORMS

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOCK_FILE = "train.lock"
# Every config value is run-defining (a workdir with a checkpoint refuses a start that changes it) except
# these, which only set what is logged, drawn, evaluated or kept, how fast the data is read, or the topology
# (checkpoints restore onto any mesh; the global batch a topology implies is checked on its own, through the
# checkpoint's meta). Inverted so that a key someone adds is protected until shown harmless:
# test_train_integrity checks that changing every key here leaves the jitted step and init unchanged.
FREE_TO_CHANGE = ("experiment.save_every", "experiment.log_every", "experiment.generate_every",
                  "experiment.eval_every", "experiment.eval_images", "experiment.log_grad_norm_every", "experiment.profile",
                  "experiment.name", "experiment.project", "experiment.logging_dir", "experiment.output_dir",
                  "experiment.resume", "dataset.eval_source", "dataset.num_threads", "dataset.prefetch_buffer_size",
                  "dataset.corrupt_images", "dataset.params.eval_shards_path_or_url",
                  "dataset.params.num_workers_per_gpu", "runtime.keep_checkpoints", "runtime.mesh", "runtime.dcn_mesh",
                  "runtime.num_devices", "training.num_generated_images", "training.enable_wandb", "sampling",
                  "evaluation")


class RunMismatchError(ValueError):
  """The workdir holds a run of another config."""


class WorkdirLockedError(RuntimeError):
  """Another training run holds the workdir."""


def _flatten(value, prefix: str) -> dict:
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
    return out
  return {prefix: value}


def is_free(key: str) -> bool:
  return any(key == f or key.startswith(f + ".") for f in FREE_TO_CHANGE)


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
  """``key: saved -> current`` for every value that differs: (run-defining ones, free ones)."""
  a, b = _flatten(saved, ""), _flatten(current, "")
  text = lambda tree, k: json.dumps(tree.get(k), sort_keys=True, default=str)
  diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if text(a, k) != text(b, k)]
  free = [d for d in diffs if is_free(d.split(":", 1)[0])]
  return [d for d in diffs if d not in free], free


def run_differences(saved: dict, current: dict) -> list[str]:
  """``key: saved -> current`` for every run-defining value that differs."""
  return config_changes(saved, current)[0]


def check_workdir(workdir: str, cfg: ml_collections.ConfigDict, *, is_main: bool) -> None:
  """Writes ``config.json`` on the first start; once the run has a checkpoint, later starts must bring the
  same run-defining values, and ``config.json`` keeps the first start's (changed free values are printed).
  (A start that failed before its first checkpoint, say on a wrong data path, left nothing to protect: the
  next start's config replaces it.)"""
  path = paths.join(workdir, CONFIG_FILE)
  current = json.loads(json.dumps(cfg.to_dict(), default=str))
  if paths.exists(path) and _has_checkpoint(workdir):
    saved = json.loads(paths.resolve(path).read_text())
    diffs, free = config_changes(saved, current)
    if diffs:
      raise RunMismatchError(f"{workdir} holds a run of another config ({len(diffs)} difference(s): "
                             + "; ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else "")
                             + "). Use a new --workdir; nothing in this one was changed.")
    if free and is_main:
      print(f"changed since the run began (free to change; {CONFIG_FILE} keeps the first values): "
            + "; ".join(free), flush=True)
    return
  if is_main:
    paths.makedirs(workdir)
    paths.write_text_atomic(path, json.dumps(current, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------------- workdir lock


def _process_start(pid: int) -> str | None:
  """The kernel's start time of ``pid`` (Linux), which tells a live holder from a later process of that pid."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def lock_record() -> dict:
  pid = os.getpid()
  return {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read_lock(path: str) -> dict | None:
  try:
    return json.loads(paths.resolve(path).read_text())
  except (OSError, ValueError):
    return None


def _holder_is_gone(record: dict) -> bool:
  """Only provable on the holder's own host: its pid is dead, or is now another process."""
  if record.get("host") != socket.gethostname():
    return False
  pid = int(record.get("pid", -1))
  if not _pid_alive(pid):
    return True
  return record.get("process_start") is not None and _process_start(pid) != record["process_start"]


def _describe(record: dict) -> str:
  return f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')}"


def acquire_lock(workdir: str, *, break_lock: bool = False) -> dict:
  """Takes ``workdir/train.lock`` for this process; returns the record written there.

  A lock whose holder is gone (same host, dead pid) is taken over with a note; so is any lock with
  ``break_lock`` (a run on another host that is known to be dead). Otherwise raises WorkdirLockedError
  naming the holder.
  """
  paths.makedirs(workdir)
  path = paths.join(workdir, LOCK_FILE)
  mine = lock_record()
  if paths.is_url(path):
    return _acquire_object_lock(workdir, path, mine, break_lock=break_lock)
  tmp = f"{path}.{mine['pid']}.tmp"
  with open(tmp, "w") as f:
    json.dump(mine, f)
  try:
    for _ in range(3):
      try:
        os.link(tmp, path)  # atomic, and fails if a lock exists: the lock file is never seen half-written
        return mine
      except FileExistsError:
        pass
      other = _read_lock(path)
      if other is None:  # vanished meanwhile (its run ended): try again
        continue
      _take_over_or_refuse(workdir, other, break_lock=break_lock)
      stale = f"{path}.stale.{mine['pid']}"
      try:
        os.rename(path, stale)
      except FileNotFoundError:
        continue
      if _read_lock(stale) != other:  # another start took it over first: give it back
        with contextlib.suppress(FileExistsError):
          os.link(stale, path)
      os.remove(stale)
    raise WorkdirLockedError(f"could not lock {workdir}: other starts keep taking {path}")
  finally:
    os.remove(tmp)


def _take_over_or_refuse(workdir: str, other: dict, *, break_lock: bool) -> None:
  """Another run's lock record ``other``: refused while that run lives (unless ``break_lock``), else taken over."""
  if not (break_lock or _holder_is_gone(other)):
    raise WorkdirLockedError(
        f"{workdir} is in use by another training run ({_describe(other)}); wait for it to end, or, if it "
        "is gone, pass --break_lock")
  why = "--break_lock" if break_lock else "that process is gone"
  print(f"note: taking over the lock of {workdir} from {_describe(other)} ({why})", flush=True)


def _acquire_object_lock(workdir: str, path: str, mine: dict, *, break_lock: bool) -> dict:
  """The lock in an object store, which has no ``link``: read, then written. Two starts within the same
  second can both take it; it guards against the common mistake (a second run on a live workdir)."""
  other = _read_lock(path)
  if other is not None:
    _take_over_or_refuse(workdir, other, break_lock=break_lock)
  paths.write_text_atomic(path, json.dumps(mine))
  return mine


def release_lock(workdir: str, record: dict) -> None:
  """Removes the lock if it is still ``record`` (a run that took over a lock left its record there)."""
  path = paths.join(workdir, LOCK_FILE)
  if _read_lock(path) == record:
    paths.resolve(path).unlink()


def _lock_job(workdir: str, *, break_lock: bool) -> dict | None:
  """One lock for the whole job, held by process 0; the other processes learn whether it took it."""
  record, error = None, None
  if jax.process_index() == 0:
    try:
      record = acquire_lock(workdir, break_lock=break_lock)
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other processes were told
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    if not bool(multihost_utils.broadcast_one_to_all(np.int32(record is not None))) and error is None:
      error = WorkdirLockedError(f"process 0 could not lock {workdir} (its output names the run holding it)")
  if error is not None:
    raise error
  return record


def _close_manager(manager) -> None:
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001 - the error that stopped the run is the one to report
    log.error("finishing the last checkpoint save failed: %s", checkpoints.short_error(e))
  manager.close()


def _has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir/checkpoints`` holds a finished step (Orbax's unfinished saves carry a suffix)."""
  folder = paths.resolve(workdir) / "checkpoints"
  return folder.is_dir() and any(child.name.isdigit() for child in folder.iterdir())


def make_mesh(cfg: ml_collections.ConfigDict):
  """The mesh of ``runtime.mesh`` (x ``runtime.dcn_mesh`` across slices) over all devices, or the first
  ``runtime.num_devices`` of them."""
  runtime = cfg.get("runtime", None) or {}
  devices = jax.devices()
  num = int(runtime.get("num_devices", 0) or 0)
  if num < 0 or num > len(devices):
    raise ValueError(f"runtime.num_devices={num}: must be in [0, {len(devices)}] (0 = all devices)")
  if num and jax.process_count() > 1:
    raise ValueError("runtime.num_devices only applies to single-process runs")
  shape = runtime.get("mesh", None)
  shape = shape.to_dict() if hasattr(shape, "to_dict") else dict(shape or {"data": -1})
  dcn = runtime.get("dcn_mesh", None)
  dcn = dcn.to_dict() if hasattr(dcn, "to_dict") else dict(dcn or {})
  if num and any(int(v) != 1 for v in dcn.values()):
    raise ValueError("runtime.num_devices and runtime.dcn_mesh exclude each other (a DCN mesh spans every slice)")
  try:
    return sharding.create_mesh(shape, devices[:num] if num else devices, dcn_shape=dcn)
  except ValueError as e:
    raise ValueError(f"runtime.mesh {shape}, runtime.dcn_mesh {dcn}: {e}") from None


def _is_due(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


def initial_state(task, abstract, init_checkpoint: str) -> tuple[Any, int]:
  """A new run's ``(state, step)``: initialised, or with ``experiment.init_checkpoint`` (a step folder of a
  run, ``<workdir>/checkpoints/<step>``) that checkpoint's whole state and step, as the reference's
  ``train_tokenizer.py`` starts from it (its data position is not taken: the data start afresh)."""
  if not init_checkpoint:
    return task.init_state(), 0
  import orbax.checkpoint as ocp

  path = paths.resolve(init_checkpoint)
  if not (path / "state").is_dir():
    raise FileNotFoundError(f"experiment.init_checkpoint={init_checkpoint!r} is not a checkpoint step folder "
                            "(<workdir>/checkpoints/<step>, which holds state/)")
  state = ocp.StandardCheckpointer().restore(path / "state", abstract)
  return state, int(jax.device_get(state.step))


def train(cfg: ml_collections.ConfigDict, workdir: str, *, num_steps: int | None = None,
          break_lock: bool = False) -> dict:
  """Trains (or resumes) the run in ``workdir``; returns a summary dict.

  ``num_steps``: stop after this many steps in this invocation (the schedule
  still runs to ``training.max_train_steps``), e.g. to split a run into jobs.
  ``break_lock``: take over the workdir's lock even if its holder cannot be shown
  to be gone (a run on another host that died).
  """
  if num_steps is not None and int(num_steps) < 1:
    raise ValueError(f"num_steps (--steps) = {num_steps}: must be >= 1, or left out to run to "
                     "training.max_train_steps")
  workdir = paths.as_str(workdir)  # a bucket URL stays one: each host writes there, not to its own disk
  stage = stage_of(cfg)
  validate_common(cfg)
  mesh = make_mesh(cfg)
  lock = _lock_job(workdir, break_lock=break_lock)
  try:
    return _train_locked(cfg, workdir, stage, mesh, num_steps)
  finally:
    if lock is not None:
      release_lock(workdir, lock)


SUMMARY_FILE = "summary.json"


def write_summary(workdir: str, summary: dict) -> str:
  """``workdir/summary.json``: what the finished run printed last (its final evaluation, grid, export)."""
  path = paths.join(workdir, SUMMARY_FILE)
  text = json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}, indent=1, default=str)
  paths.write_bytes_atomic(path, (text + "\n").encode())
  return path


def _check_global_batch(meta: dict, global_batch: int, workdir: str) -> None:
  """The topology may change between restarts, the global batch it implies may not."""
  saved = meta.get("global_batch")
  if saved is not None and int(saved) != global_batch:
    raise RunMismatchError(f"{workdir} holds a run with global batch {saved}; this start's is {global_batch} "
                           "(training.per_gpu_batch_size x devices, or training.global_batch_size). Use a new "
                           "--workdir, or the devices or batch it ran with; nothing in this one was changed.")


def _train_locked(cfg: ml_collections.ConfigDict, workdir: str, stage: str, mesh, num_steps: int | None) -> dict:
  is_main = jax.process_index() == 0
  check_workdir(workdir, cfg, is_main=is_main)
  task = make_task(cfg, mesh, workdir)
  if hasattr(task, "prepare_evaluation"):  # the evaluation networks' files: a missing one fails now, not later
    task.prepare_evaluation()

  total = int(cfg.training.max_train_steps)
  exp = cfg.experiment
  save_every, log_every = int(exp.save_every), int(exp.log_every)
  generate_every, eval_every = int(exp.generate_every), int(exp.get("eval_every", 0))
  manager = checkpoints.make_manager(paths.join(workdir, "checkpoints"), save_every=save_every,
                                     keep=int(cfg.runtime.get("keep_checkpoints", 3)))
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
        init = str(exp.get("init_checkpoint", "") or "")
        state, start = initial_state(task, abstract, init)
        say(f"[{stage}] new run in {workdir}: {total} steps, global batch {task.global_batch} "
            f"({task.process_count} process(es), mesh {dict(mesh.shape)})"
            + (f", from {init} at step {start}" if init else ""))
      else:
        start, state, meta = restored
        _check_global_batch(meta, task.global_batch, workdir)
        if meta.get("data") is not None:
          data_iter.set_state(meta["data"])
        say(f"[{stage}] resumed {workdir} at step {start}/{total}")
      note = task.start_note(start)
      if note:
        say(f"[{stage}] note: {note}")
      end = total if num_steps is None else min(total, start + int(num_steps))
      writer = observe.make_writer(workdir, is_main=is_main)  # once the run is ours
      meta_now = lambda: {"data": data_iter.get_state(), "stage": stage, "global_batch": task.global_batch}
      progress = observe.Progress(start, total, task.global_batch)
      history: list[dict] = []
      step = start
      summary: dict = {"stage": stage, "workdir": workdir, "start_step": start}
      with StopRequest() as stop:
        agree, stopping = StopAgreement(mesh), False
        profiler = observe.StepProfiler(paths.join(workdir, "profile"), **dict(exp.get("profile", None) or {}),
                                        process_index=jax.process_index())
        while step < end and not stopping:
          batch = task.to_device(next(data_iter))
          profiler.before_step(step + 1)
          compiling = step in task.compile_steps(start)
          if compiling and step == start:
            say(f"[{stage}] compiling the train step (the progress line's rates and ETA leave this out)", flush=True)
          state, metrics = task.step(state, batch, step)
          grad_norms = metrics.pop(GRAD_NORMS, None)  # per parameter, written on their own cadence
          step += 1
          if compiling:  # the rates and the ETA count from the first step of a compiled program on
            jax.block_until_ready(metrics)
            seconds = progress.restart(step)
            if step == start + 1:
              say(f"[{stage}] compiled and ran step {step} in {observe.format_seconds(seconds)}", flush=True)
          traced = profiler.after_step(step, metrics)
          if traced:
            say(f"[{stage}] profile of steps {profiler.first}..{step} in {traced}", flush=True)
          history.append(metrics)
          if grad_norms is not None and _is_due(step, int(exp.get("log_grad_norm_every", 0) or 0)):
            writer.write_scalars(step, {k: float(v) for k, v in jax.device_get(grad_norms).items()})
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
            grid = task.visualize(state)
            if is_main:
              summary["image_grid"] = observe.save_grid(workdir, "recon" if stage == "tokenizer" else "samples",
                                                        step, grid)
          checkpoints.save(manager, step, state, meta_now())
          stopping = agree(bool(stop))  # the same answer on every process, after the same step
        profiler.stop()  # a trace the run ended inside
        if step > start and (stopping or step == end) and manager.latest_step() != step:
          checkpoints.save(manager, step, state, meta_now(), force=True)
        manager.wait_until_finished()
        if step > start and manager.latest_step() != step:  # never report a save that did not happen
          raise checkpoints.CheckpointError(f"the checkpoint of step {step} was not written (newest: "
                                            f"{manager.latest_step()})")
      writer.flush()
      summary.update(end_step=step, stopped_by_signal=stopping, finished=step >= total)
      if step >= total:
        summary["export"] = task.export(state)  # every process: gathering sharded weights is collective
        if is_main:
          say(f"[{stage}] done: weights in {summary['export']}")
          write_summary(workdir, summary)
      elif stopping:  # on every process: each one's log names the step it saved
        print(f"[{stage}] stopped at step {step}; checkpoint saved, run again to resume", flush=True)
  finally:
    # Also when a step, the data or an evaluation raised: an asynchronous save still in flight is
    # finished (not left as a temporary folder) before the error reaches the user, and its threads do
    # not bury that error in tracebacks at interpreter exit.
    _close_manager(manager)
  return summary

