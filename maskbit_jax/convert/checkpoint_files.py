"""Reading and writing PyTorch-layout state dicts in every format the released models use.

* ``.bin`` / ``.pt`` / ``.pth``: ``torch.save`` of a plain ordered dict (read
  without torch, never executing code from the file);
* ``.ckpt``: a Lightning checkpoint; its inner ``state_dict`` is used and the
  ``loss.*`` entries (the original training's LPIPS and discriminator) dropped;
* ``.safetensors``;
* ``*_state.npz``: the same tensors under the same names, for readers without torch;
* a directory holding ``pytorch_model.bin`` (the reference's ``save_pretrained``).
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from maskbit_jax.convert import torch_pickle

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
LIGHTNING_DROP_PREFIXES = ("loss.",)


def _resolve(path: str) -> str:
  if os.path.isdir(path):
    candidate = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(candidate):
      return candidate
    raise FileNotFoundError(f"{path} is a directory without pytorch_model.bin")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  return path


def _as_state_dict(obj, path: str) -> "OrderedDict[str, np.ndarray]":
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = OrderedDict((k, v) for k, v in obj["state_dict"].items()
                      if not k.startswith(LIGHTNING_DROP_PREFIXES))
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
  out = OrderedDict()
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    out[str(key)] = value
  return out


def read_state_dict(path: str | os.PathLike) -> "OrderedDict[str, np.ndarray]":
  """Returns ``{name: array}`` in file order, PyTorch names and layouts."""
  path = _resolve(os.fspath(path))
  lower = path.lower()
  if lower.endswith(".safetensors"):
    from safetensors.numpy import load_file

    return OrderedDict(load_file(path).items())
  if lower.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return OrderedDict((k, data[k]) for k in data.files)
  if lower.endswith(TORCH_SUFFIXES):
    return _as_state_dict(torch_pickle.read_torch_file(path), path)
  raise ValueError(f"{path}: unknown checkpoint format; expected one of "
                   f"{TORCH_SUFFIXES + ('.safetensors', '_state.npz')} or an Orbax checkpoint directory")


def write_state_dict(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
  """Writes a state dict as ``.bin`` (torch zip format, no torch needed), ``.safetensors`` or ``.npz``.

  The file appears atomically: an existing file is replaced only once the new
  one is complete.
  """
  path = os.fspath(path)
  lower = path.lower()
  if lower.endswith((".bin", ".pt", ".pth")):
    torch_pickle.write_torch_file(path, state)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    if lower.endswith(".safetensors"):
      from safetensors.numpy import save_file

      save_file({k: np.array(v, order="C", copy=None) for k, v in state.items()}, tmp)  # keeps 0-d shapes
    elif lower.endswith(".npz"):
      with open(tmp, "wb") as f:
        np.savez(f, **state)
    else:
      raise ValueError(f"{path}: cannot write this format; use .bin, .safetensors or .npz")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
