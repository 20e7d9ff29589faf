"""Our own checkpoints of model parameters: an Orbax PyTree plus a small JSON description.

Layout of a converted checkpoint directory ``DIR``::

  DIR/params/          Orbax (StandardCheckpointer) PyTree of the flax params
  DIR/maskbit_jax.json kind ("tokenizer", ...), the model config, the source
                       file and its key order (so export reproduces it)

Training checkpoints (optimizer state, data iterator, ...) are managed by the
train loop's CheckpointManager; this module is for weights that users convert,
share and load.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = "maskbit_jax.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def is_params_checkpoint(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def _write_json_atomic(path: str, payload: dict) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(payload, f, indent=1, sort_keys=False)
  os.replace(tmp, path)


def save_params(directory: str | os.PathLike, params: Any, *, kind: str, config: dict,
                meta: dict | None = None, overwrite: bool = False) -> str:
  """Saves ``params`` to ``directory`` and returns its absolute path.

  Refuses to replace an existing checkpoint unless ``overwrite``; with it the
  old one is only removed once the new one is completely written.
  """
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(directory) + ".tmp-")
  # This process alone writes (host arrays, a staging folder of its own): no barrier with the others,
  # which in a multi-process run are not saving (train's export: process 0 writes what all gathered).
  me = jax.process_index()
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"save_params_{me}"))
  checkpointer.save(os.path.join(staging, PARAMS_DIR), params)
  checkpointer.wait_until_finished()
  _write_json_atomic(os.path.join(staging, META_FILE),
                     dict(format_version=FORMAT_VERSION, kind=kind, config=config, **(meta or {})))
  if os.path.exists(directory):
    old = directory + ".old"
    os.replace(directory, old)
    os.replace(staging, directory)
    import shutil

    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(staging, directory)
  return directory


def read_meta(directory: str | os.PathLike) -> dict:
  path = os.path.join(os.fspath(directory), META_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory} is not a maskbit_jax checkpoint (no {META_FILE})")
  with open(path) as f:
    return json.load(f)


def load_params(directory: str | os.PathLike, abstract_params: Any | None = None) -> Any:
  """Restores params; with ``abstract_params`` (ShapeDtypeStructs, optionally
  carrying shardings) shapes are checked and arrays placed accordingly."""
  path = os.path.join(os.path.abspath(os.fspath(directory)), PARAMS_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{directory} has no {PARAMS_DIR}/ folder")
  checkpointer = ocp.StandardCheckpointer()
  if abstract_params is None:
    return checkpointer.restore(path)
  return checkpointer.restore(path, abstract_params)


def to_numpy(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
