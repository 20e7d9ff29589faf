"""Loading model params from any supported checkpoint form, strictly."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from maskbit_jax import checkpointing
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.param_mapping import CheckpointMismatchError, ParamMapping, torch_state_to_flax


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


def restore_params(directory: str, abstract_params: Any, mapping: ParamMapping | None = None) -> Any:
  """Restores one of our params folders, strictly against ``abstract_params``.

  A folder written before the deep stacks ran as a scan holds one module per layer; with the
  ``mapping`` of its model such a folder is read in that layout and stacked (exactly).
  """
  # Shapes and dtypes from the folder's metadata first: no array is read from a folder that cannot match.
  stored = checkpointing.params_metadata(directory)
  if mapping is not None and mapping.layer_stacks and not _matches(abstract_params, stored, directory):
    per_layer = mapping.per_layer(_shapes(abstract_params))
    if _matches(per_layer, stored, directory):
      restored = checkpointing.to_numpy(checkpointing.load_params(directory, per_layer))
      return jax.tree.map(jnp.asarray, mapping.stacked(restored))
  check_params_match(abstract_params, stored, directory)  # names every problem against the model's layout
  return checkpointing.load_params(directory, _shapes(abstract_params))


def load_params(checkpoint: str | os.PathLike, abstract_params: Any, mapping: ParamMapping, kind: str) -> Any:
  """Params from one of our Orbax checkpoints of ``kind``, or from a PyTorch-format file via ``mapping``."""
  checkpoint = os.fspath(checkpoint)
  if checkpointing.is_params_checkpoint(checkpoint):
    meta = checkpointing.read_meta(checkpoint)
    if meta.get("kind") != kind:
      raise ValueError(f"{checkpoint} holds a {meta.get('kind')!r} checkpoint, not a {kind}")
    return restore_params(checkpoint, abstract_params, mapping)
  params = torch_state_to_flax(read_state_dict(checkpoint), abstract_params, mapping, source=checkpoint)
  return jax.tree.map(jnp.asarray, params)
