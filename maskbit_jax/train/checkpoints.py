"""Training checkpoints: Orbax CheckpointManager with async saves, keep-last-k and safe resume.

A checkpoint holds the whole train state (params, optimizer state, EMA, LeCam
state, step, PRNG key) as one PyTree item ``state`` and small JSON metadata
(``meta``; e.g. the data iterator position). Orbax writes each step into a
temporary folder and renames it when complete, so an interrupted save never
replaces a good checkpoint. On resume the newest step that restores is used;
a truncated or corrupt one is reported by path and skipped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def make_manager(directory: str, *, save_every: int = 1000, keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  if save_every < 1 or keep < 1:
    raise ValueError(f"save_every ({save_every}) and keep ({keep}) must be >= 1")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict | None = None, *,
         force: bool = False) -> bool:
  """Saves (asynchronously) if ``step`` is due or ``force``; returns whether a save started."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta or {})), force=force)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's sharding: restores onto the current mesh and topology."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any, dict] | None:
  """``(step, state, meta)`` of the newest checkpoint that restores, or None if there is none.

  ``abstract_state``: ShapeDtypeStructs with target shardings (``abstract_like``),
  so a checkpoint written on one mesh restores on another.
  """
  manager.wait_until_finished()
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                              meta=ocp.args.JsonRestore()))
    except Exception as e:  # a truncated or corrupt step: say which, fall back to the previous one
      path = os.path.join(str(manager.directory), str(step))
      log.warning("checkpoint %s cannot be restored (%s: %s); falling back to the previous one",
                  path, type(e).__name__, e)
      print(f"WARNING: checkpoint {path} cannot be restored ({type(e).__name__}); trying the previous one",
            flush=True)
      continue
    return step, restored["state"], dict(restored["meta"] or {})
  return None
