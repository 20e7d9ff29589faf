"""Training checkpoints: Orbax CheckpointManager with async saves, keep-last-k, integrity and safe resume.

A checkpoint holds the whole train state (params, optimizer state, EMA, LeCam
state, step, PRNG key) as one PyTree item ``state`` and small JSON metadata
(``meta``; e.g. the data iterator position). Orbax writes each step into a
temporary folder and renames it when complete, so an interrupted save never
replaces a good checkpoint.

Orbax checks no checksums: flipped bits in an array file restore silently. So
once a step's save is finalized, process 0 writes ``<step>/integrity.json``
(the size and sha256 of every file in the step folder), and a restore first
checks the step against it. On resume the newest step that verifies and
restores is used; every newer one (truncated, corrupt, unreadable) is named
and moved aside to ``<checkpoints>_rejected/``, never deleted, so the next
save at that step writes a fresh checkpoint there. A step without a manifest
(from an older version, or a run killed between finalizing and sealing) is
restored unverified, with a note.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import sys
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from maskbit_jax import paths

log = logging.getLogger(__name__)

MANIFEST = "integrity.json"
REJECTED_SUFFIX = "_rejected"
_CHUNK = 1 << 22
# Loggers through which Orbax and its dependencies report a failed read, each with a long traceback.
_LIBRARY_LOGGERS = ("absl", "orbax", "tensorstore", "asyncio")


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved, or no step of a non-empty checkpoint folder verifies and restores."""


class Manager(ocp.CheckpointManager):
  """A CheckpointManager that seals the steps it writes: after each save is finalized, ``integrity.json``.

  Sealing happens in ``wait_until_finished``, which Orbax itself calls before it starts the next save
  and on ``close``: the previous save is complete then, and no save is in flight.
  """

  def __init__(self, *args, **kwargs):
    self._unsealed: list[int] = []  # before super().__init__, which may wait on saves
    super().__init__(*args, **kwargs)

  def save(self, step: int, *args, **kwargs) -> bool:
    try:
      saved = super().save(step, *args, **kwargs)
    except CheckpointError:  # the previous save's, from wait_until_finished
      raise
    except Exception as e:  # noqa: BLE001 - e.g. a full disk: one line naming the folder, the cause chained
      raise CheckpointError(f"saving the checkpoint of step {step} in {self.directory} failed "
                            f"({short_error(e)})") from e
    if saved:
      self._unsealed.append(int(step))
      if not self._options.enable_async_checkpointing:
        self._seal()
    return saved

  def wait_until_finished(self):
    try:
      super().wait_until_finished()
    except Exception as e:  # noqa: BLE001 - an asynchronous save failed (e.g. a full disk)
      self._unsealed = []
      raise CheckpointError(f"an asynchronous checkpoint save in {self.directory} failed ({short_error(e)})") from e
    self._seal()

  def _seal(self) -> None:
    pending, self._unsealed = self._unsealed, []
    if jax.process_index() != 0:  # one writer; every process's shards are in the folder once finalized
      return
    for step in pending:
      path = step_path(self, step)
      if path.exists() and not (path / MANIFEST).exists():
        write_manifest(path)


def make_manager(directory: str, *, save_every: int = 1000, keep: int = 3, async_save: bool = True) -> Manager:
  if save_every < 1 or keep < 1:
    raise ValueError(f"save_every ({save_every}) and keep ({keep}) must be >= 1")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         enable_async_checkpointing=async_save, create=True)
  return Manager(paths.resolve(directory), options=options, item_names=("state", "meta"))


def step_path(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  return epath.Path(manager.directory) / str(step)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict | None = None, *,
         force: bool = False) -> bool:
  """Saves (asynchronously) if ``step`` is due or ``force``; returns whether a save started."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta or {})), force=force)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's sharding: restores onto the current mesh and topology."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)


# ----------------------------------------------------------------------------------------- integrity


def _files(step_dir: epath.Path) -> list[str]:
  """Every file below ``step_dir`` but the manifest, as sorted paths relative to it."""
  if paths.is_url(step_dir):  # epath's walk there yields roots without their scheme
    return sorted(name for name in _object_names(step_dir, "") if name != MANIFEST)
  return sorted(str((root / name).relative_to(step_dir)) for root, _, names in step_dir.walk() for name in names
                if not (root == step_dir and name == MANIFEST))


def _object_names(folder: epath.Path, prefix: str) -> list[str]:
  names = []
  for child in folder.iterdir():
    names += _object_names(child, f"{prefix}{child.name}/") if child.is_dir() else [prefix + child.name]
  return names


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def manifest_of(step_dir: epath.Path) -> dict:
  step_dir = epath.Path(step_dir)
  files = {name: {"size": (step_dir / name).stat().length, "sha256": _sha256(step_dir / name)}
           for name in _files(step_dir)}
  return {"version": 1, "files": files}


def write_manifest(step_dir: epath.Path) -> None:
  """``integrity.json`` of a finished step; written to a temporary name first, so it is whole or absent."""
  step_dir = epath.Path(step_dir)
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest_of(step_dir), indent=1, sort_keys=True))
  tmp.rename(step_dir / MANIFEST)


def verify(step_dir: epath.Path) -> str | None:
  """What is wrong with a step folder compared to its manifest (one line), or None if nothing is.

  A step without a manifest passes (an older version wrote it); ``has_manifest`` tells them apart.
  """
  step_dir = epath.Path(step_dir)
  manifest_path = step_dir / MANIFEST
  if not manifest_path.exists():
    return None
  try:
    expected = json.loads(manifest_path.read_text())["files"]
  except (ValueError, KeyError, TypeError) as e:
    return f"fails verification: its {MANIFEST} is unreadable ({type(e).__name__})"
  problems = []
  present = set(_files(step_dir))
  for name, want in sorted(expected.items()):
    path = step_dir / name
    if name not in present:
      problems.append(f"{name} is missing")
    elif (size := path.stat().length) != want["size"]:
      problems.append(f"{name} has {size} bytes, {want['size']} expected")
    elif _sha256(path) != want["sha256"]:
      problems.append(f"{name} does not match its checksum")
  problems += [f"{name} is not in {MANIFEST}" for name in sorted(present - set(expected))]
  if not problems:
    return None
  more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
  return f"fails verification: {problems[0]}{more}"


def has_manifest(step_dir: epath.Path) -> bool:
  return (epath.Path(step_dir) / MANIFEST).exists()


# ----------------------------------------------------------------------------------------- restore


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def _agree_on_problem(problem: str | None, *, from_process_0: bool) -> bool:
  """Whether the step is bad, the same answer on every process: process 0's verdict (``from_process_0``, as
  only it verifies), or any process's (a restore can fail on one process only)."""
  bad = np.int32(problem is not None)
  if jax.process_count() == 1:
    return bool(bad)

  if from_process_0:
    return bool(multihost_utils.broadcast_one_to_all(bad))
  return bool(np.any(multihost_utils.process_allgather(bad)))


@contextlib.contextmanager
def quiet_library_errors():
  """Silences what Orbax, TensorStore and asyncio print about a failed read -- at random, from a few lines to
  tens of thousands, burying the one-line warning: logger errors with tracebacks ("Task exception was never
  retrieved"), an "Event loop is closed" traceback from each late callback thread (through sys.excepthook),
  and one per abandoned read coroutine at garbage collection (sys.unraisablehook)."""
  loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
  levels = [lg.level for lg in loggers]
  hooks = sys.unraisablehook, sys.excepthook, threading.excepthook
  for lg in loggers:
    lg.setLevel(logging.CRITICAL + 1)
  sys.unraisablehook = lambda unraisable: None
  sys.excepthook = lambda *exc: None
  threading.excepthook = lambda args: None
  try:
    yield
  finally:
    gc.collect()  # the abandoned coroutines report here, while the hooks are still quiet
    sys.unraisablehook, sys.excepthook, threading.excepthook = hooks
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def short_error(e: BaseException) -> str:
  """``Type: first line`` of an error, cut to 160 characters (TensorStore appends its whole spec)."""
  if isinstance(e, CheckpointError):
    return str(e)
  first = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {first[:160]}" + ("..." if len(first) > 160 else "")


class TracebackFilter(logging.Filter):
  """Drops the traceback (not the message) of records logged from inside Orbax: a failed asynchronous save
  logs one from every writer thread, hundreds of lines each, before the error itself reaches the caller."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and "orbax" in record.pathname.replace("\\", "/").split("/"):
      record.exc_info, record.exc_text = None, None
    return True


def _from_library(tb) -> bool:
  while tb is not None:
    parts = tb.tb_frame.f_code.co_filename.replace("\\", "/").split("/")
    if "orbax" in parts or "tensorstore" in parts:
      return True
    tb = tb.tb_next
  return False


def _is_library_noise(exc: BaseException | None, tb, obj=None) -> bool:
  """An "Event loop is closed" from a TensorStore callback that outlived Orbax's loop, or any error raised
  inside Orbax's abandoned coroutines (also "sys.meta_path is None" from them at interpreter exit)."""
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return True
  code = getattr(obj, "cr_code", None)
  if code is not None and "orbax" in code.co_filename.replace("\\", "/").split("/"):
    return True
  return _from_library(tb)


def filter_library_noise() -> None:
  """Process-wide hooks for a command line: drop the tracebacks TensorStore's callback threads and Orbax's
  abandoned coroutines print once a save or restore failed (thousands, while training goes on, and again
  at exit), and pass every other one on. The failure itself is raised as one CheckpointError."""
  if getattr(sys.excepthook, "_maskbit_filter", False):
    return
  previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(exc_type, exc, tb):
    if not _is_library_noise(exc, tb):
      previous_except(exc_type, exc, tb)

  def unraisablehook(unraisable):
    if not _is_library_noise(unraisable.exc_value, unraisable.exc_traceback, unraisable.object):
      previous_unraisable(unraisable)

  excepthook._maskbit_filter = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def set_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  """Moves step ``step`` to ``<checkpoints>_rejected/<step>`` (``<step>.1``, ... if taken); returns the new path.

  Process 0 moves; every process then re-reads the step list (call on all processes).
  """
  source = step_path(manager, step)
  folder = epath.Path(manager.directory)
  rejected = folder.parent / (folder.name + REJECTED_SUFFIX)
  target = rejected / str(step)
  n = 0
  while target.exists():
    n += 1
    target = rejected / f"{step}.{n}"
  if jax.process_index() == 0:
    rejected.mkdir(parents=True, exist_ok=True)
    source.rename(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"maskbit_set_aside_{step}")
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any, dict] | None:
  """``(step, state, meta)`` of the newest checkpoint that verifies and restores; None if there is none.

  ``abstract_state``: ShapeDtypeStructs with target shardings (``abstract_like``),
  so a checkpoint written on one mesh restores on another. The steps newer than
  the restored one failed: each is named and set aside (``set_aside``), so
  saves resume at those steps. Raises CheckpointError if there are steps but
  none restores (nothing is moved then: the folder is left as it was).
  """
  manager.wait_until_finished()
  failed: list[int] = []
  with quiet_library_errors():
    for step in sorted(manager.all_steps(), reverse=True):
      path = step_path(manager, step)
      problem = verify(path) if jax.process_index() == 0 else None
      if not _agree_on_problem(problem, from_process_0=True):
        problem = None
        try:
          restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                  meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt step: say which, try the previous one
          problem = f"cannot be restored ({short_error(e)})"
          log.debug("restoring %s failed", path, exc_info=True)
        if not _agree_on_problem(problem, from_process_0=False):
          if not has_manifest(path):
            _say(f"note: checkpoint {path} has no {MANIFEST} (an older version, or a run stopped while "
                 "sealing it); restored unverified")
          break
      _say(f"WARNING: checkpoint {path} {problem or 'cannot be restored on every process'}; "
           "trying the previous one")
      failed.append(step)
    else:
      if failed:
        raise CheckpointError(f"no checkpoint in {manager.directory} restores (steps {sorted(failed)}, each named "
                              "above); move the folder aside to start afresh, or use a new --workdir")
      return None
  for bad in failed:
    _say(f"checkpoint {step_path(manager, bad)} moved to {set_aside(manager, bad)}; the next save at step {bad} "
         "replaces it")
  return step, restored["state"], dict(restored["meta"] or {})
