"""Model weights on disk: our own params folders (an Orbax PyTree plus a small JSON description), and the one
loader every model family's weights go through (``load_weights``: our folders restored directly, released
PyTorch-format files through the family's converter mapping).

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
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from maskbit_jax import paths
from maskbit_jax.convert.checkpoint_files import read_state_dict  # the released formats' safe reader
from maskbit_jax.convert.param_mapping import CheckpointMismatchError

META_FILE = "maskbit_jax.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def is_params_checkpoint(path: str | os.PathLike) -> bool:
  folder = paths.resolve(path)
  return folder.is_dir() and (folder / META_FILE).is_file()


def _write_json_atomic(path: str, payload: dict) -> None:
  paths.write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=False))


def save_params(directory: str | os.PathLike, params: Any, *, kind: str, config: dict,
                meta: dict | None = None, overwrite: bool = False) -> str:
  """Saves ``params`` to ``directory`` and returns its absolute path.

  Refuses to replace an existing checkpoint unless ``overwrite``; with it the
  old one is only removed once the new one is completely written. A URL (``gs://...``) is written in place
  instead (a folder rename there copies every object): its description last, so that until it is
  complete the folder is not a checkpoint (``is_params_checkpoint``).
  """
  if paths.is_url(directory):
    return _save_params_in_place(paths.as_str(directory), params, kind=kind, config=config, meta=meta,
                                 overwrite=overwrite)
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(directory) + ".tmp-")
  os.chmod(staging, 0o777 & ~paths.umask())  # mkdtemp makes it owner-only; an export is meant to be shared
  _write_params(staging, params, dict(format_version=FORMAT_VERSION, kind=kind, config=config, **(meta or {})))
  if os.path.exists(directory):
    old = directory + ".old"
    os.replace(directory, old)
    os.replace(staging, directory)
    import shutil

    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(staging, directory)
  return directory


def _write_params(directory: str, params: Any, description: dict) -> None:
  """``directory/params`` (Orbax) and then ``directory/maskbit_jax.json``."""
  # This process alone writes (host arrays, a folder of its own): no barrier with the others, which
  # in a multi-process run are not saving (train's export: process 0 writes what all gathered).
  me = jax.process_index()
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"save_params_{me}"))
  checkpointer.save(paths.resolve(paths.join(directory, PARAMS_DIR)), params)
  checkpointer.wait_until_finished()
  _write_json_atomic(paths.join(directory, META_FILE), description)


def _save_params_in_place(directory: str, params: Any, *, kind: str, config: dict, meta: dict | None,
                          overwrite: bool) -> str:
  folder = paths.resolve(directory)
  if folder.is_dir() and any(folder.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    if (folder / META_FILE).exists():  # first, so that a save cut short leaves no checkpoint behind
      (folder / META_FILE).unlink()
    folder.rmtree()
  _write_params(directory, params, dict(format_version=FORMAT_VERSION, kind=kind, config=config, **(meta or {})))
  return directory


KINDS = ("tokenizer", "generator", "bar_generator", "bar_tokenizer")
# A description is a few kB; anything far larger is not one of ours (and is not parsed).
MAX_META_BYTES = 16 << 20


class CheckpointMetaError(ValueError):
  """A checkpoint folder's ``maskbit_jax.json`` is not a description this library writes."""


def read_meta(directory: str | os.PathLike) -> dict:
  """The folder's description, checked to be plain data: ``kind`` one of ``KINDS``, ``config`` a mapping.

  These folders are shared like released files, so their description is data only: a ``config``
  that is a path (to a ``.py`` that would be imported) or anything but a mapping is refused here,
  and nothing from the folder is ever imported or run.
  """
  path = paths.join(directory, META_FILE)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{directory} is not a maskbit_jax checkpoint (no {META_FILE})")
  size = paths.file_size(path)
  if size > MAX_META_BYTES:
    raise CheckpointMetaError(f"{path}: {size} bytes, not a maskbit_jax description (at most {MAX_META_BYTES})")
  try:
    meta = json.loads(paths.resolve(path).read_bytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointMetaError(f"{path} is not valid JSON ({e})") from None
  return check_meta(meta, path)


def check_meta(meta: Any, source: str) -> dict:
  """``meta`` itself if it is a description of ours; otherwise a CheckpointMetaError naming the field."""
  if not isinstance(meta, dict):
    raise CheckpointMetaError(f"{source}: expected a JSON object, found {type(meta).__name__}")
  if meta.get("kind") not in KINDS:
    raise CheckpointMetaError(f"{source}: 'kind' is {meta.get('kind')!r}, expected one of {KINDS}")
  config = meta.get("config")
  if not isinstance(config, dict):
    what = f"the path {config!r}" if isinstance(config, str) else type(config).__name__
    raise CheckpointMetaError(f"{source}: 'config' must be the config itself (a JSON object), found {what}; "
                              "a shared checkpoint never names a config file to import")
  return meta


def config_of(directory: str | os.PathLike) -> dict:
  """The config stored with one of our checkpoints, as plain data (see ``read_meta``)."""
  return read_meta(directory)["config"]


def stored_config(*checkpoints: str | os.PathLike | None) -> dict | None:
  """The config stored with the first of ``checkpoints`` that is one of our folders, else None.

  Lets a command run on our own exports without ``--config``: the export carries the config it was
  trained with.
  """
  for checkpoint in checkpoints:
    if checkpoint and is_params_checkpoint(checkpoint):
      return config_of(checkpoint)
  return None


def params_metadata(directory: str | os.PathLike) -> Any:
  """The tree of the saved params' metadata (``.shape``, ``.dtype`` per leaf), without reading array data."""
  path = paths.resolve(directory) / PARAMS_DIR
  if not path.is_dir():
    raise FileNotFoundError(f"{directory} has no {PARAMS_DIR}/ folder")
  try:
    tree = ocp.StandardCheckpointer().metadata(path).item_metadata
  except Exception as e:  # noqa: BLE001 - any failure to parse a folder's metadata means "not ours"
    raise CheckpointMetaError(f"{directory}: unreadable params metadata ({type(e).__name__}: {e})") from None
  return getattr(tree, "tree", tree)


def load_params(directory: str | os.PathLike, abstract_params: Any | None = None) -> Any:
  """Restores params; with ``abstract_params`` (ShapeDtypeStructs, optionally
  carrying shardings) shapes are checked and arrays placed accordingly."""
  path = paths.resolve(directory) / PARAMS_DIR
  if not path.is_dir():
    raise FileNotFoundError(f"{directory} has no {PARAMS_DIR}/ folder")
  checkpointer = ocp.StandardCheckpointer()
  if abstract_params is None:
    return checkpointer.restore(path)
  return checkpointer.restore(path, abstract_params)


def to_numpy(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


# ---------------------------------------------------------------- loading a model's weights, strictly

def check_params_match(abstract_params, params, source: str) -> None:
  """Raises CheckpointMismatchError naming every missing/unexpected path, shape and dtype mismatch.

  ``params`` may be arrays or metadata (anything with ``.shape`` and ``.dtype``).
  """
  want = {"/".join(k): v for k, v in traverse_util.flatten_dict(abstract_params).items()}
  got = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  problems = [f"missing {k}" for k in want if k not in got]
  problems += [f"unexpected {k} {tuple(got[k].shape)}" for k in got if k not in want]
  for k in want:
    if k not in got:
      continue
    if tuple(got[k].shape) != tuple(want[k].shape):
      problems.append(f"shape mismatch for {k}: {source} has {tuple(got[k].shape)}, model expects "
                      f"{tuple(want[k].shape)}")
    elif np.dtype(got[k].dtype) != np.dtype(want[k].dtype):
      problems.append(f"dtype mismatch for {k}: {source} has {np.dtype(got[k].dtype)}, model expects "
                      f"{np.dtype(want[k].dtype)}")
  if problems:
    raise CheckpointMismatchError(f"{source} does not match the model ({len(problems)} problem(s)):\n  "
                                  + "\n  ".join(problems))


def _shapes(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _matches(abstract_params, stored, source: str) -> bool:
  try:
    check_params_match(abstract_params, stored, source)
  except CheckpointMismatchError:
    return False
  return True


def restore_params(directory: str, abstract_params: Any, mapping=None) -> Any:
  """Restores one of our params folders, strictly against ``abstract_params``.

  A folder written before the deep stacks ran as a scan holds one module per layer; with the
  ``mapping`` of its model (a ``ParamMapping``, or a function making one: asked for only then) such a
  folder is read in that layout and stacked (exactly).
  """
  # Shapes and dtypes from the folder's metadata first: no array is read from a folder that cannot match.
  stored = params_metadata(directory)
  if mapping is not None and not _matches(abstract_params, stored, directory):
    mapping = mapping() if callable(mapping) and not hasattr(mapping, "layer_stacks") else mapping
    if mapping.layer_stacks:
      per_layer = mapping.per_layer(_shapes(abstract_params))
      if _matches(per_layer, stored, directory):
        restored = to_numpy(load_params(directory, per_layer))
        return jax.tree.map(jnp.asarray, mapping.stacked(restored))
  check_params_match(abstract_params, stored, directory)  # names every problem against the model's layout
  return load_params(directory, _shapes(abstract_params))


def load_weights(checkpoint: str | os.PathLike, abstract_params: Any, *, kind: str, from_state_dict,
                 mapping=None) -> Any:
  """A model's params from one of our folders of ``kind`` (restored as they are, no converter), or from a
  released PyTorch-format file (``.bin``, ``.ckpt``, ``.safetensors``, ``_state.npz``; read without torch and
  without running code from it) through ``from_state_dict(state_dict, source) -> params``, the family's
  converter mapping. ``mapping``: the family's ``ParamMapping`` (or a function making one) for folders of
  the per-layer layout (``restore_params``)."""
  checkpoint = os.fspath(checkpoint)
  if is_params_checkpoint(checkpoint):
    meta = read_meta(checkpoint)
    if meta.get("kind") != kind:
      raise ValueError(f"{checkpoint} holds a {meta.get('kind')!r} checkpoint, not a {kind}")
    return restore_params(checkpoint, abstract_params, mapping)
  return jax.tree.map(jnp.asarray, from_state_dict(read_state_dict(checkpoint), checkpoint))
