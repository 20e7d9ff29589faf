"""Explicit name and layout maps between PyTorch state dicts and flax param trees.

A flax parameter path such as ``('encoder', 'down_2', 'res_blocks_0', 'conv1', 'kernel')``
maps to the PyTorch key ``encoder.down.2.res_blocks.0.conv1.weight`` through a
small, explicit table of regular expressions per model family; leaf layouts are
converted by one rule per leaf kind (conv kernels ``[O, I, kh, kw] <-> [kh, kw, I, O]``,
dense kernels ``[O, I] <-> [I, O]``, norm scales, embeddings and biases as they
are). Loading is strict: every key must be used, every parameter found, every
shape equal, and every problem is reported by name.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
from flax import traverse_util

from maskbit_jax.convert.checkpoint_files import dtype_of, shape_of

Rules = Sequence[tuple[str, str]]

# Module-path rewrites, applied to the '.'-joined flax module path (without the leaf).
VQGAN_RULES: Rules = (
    (r"(^|\.)(down|up|res_blocks)_(\d+)(?=\.|$)", r"\1\2.\3"),
)
GENERATOR_RULES: Rules = (
    (r"(^|\.)transformer_layers_(\d+)_(\d+)(?=\.|$)", r"\1transformer.layers.\2.\3"),
    (r"(^|\.)(first_layer|last_layer|net)_(\d+)(?=\.|$)", r"\1\2.\3"),
    (r"(^|\.)final_norm(?=\.|$)", r"\1norm_after_transformer"),
)
GENERATOR_KEY_RULES: Rules = (
    (r"\.mha\.in_proj\.(weight|bias)$", r".mha.in_proj_\1"),
)
TAMING_RULES: Rules = (
    (r"(^|\.)(down|up)_(\d+)_(block|attn)_(\d+)(?=\.|$)", r"\1\2.\3.\4.\5"),
    (r"(^|\.)down_(\d+)_downsample_conv(?=\.|$)", r"\1down.\2.downsample.conv"),
    (r"(^|\.)up_(\d+)_upsample_conv(?=\.|$)", r"\1up.\2.upsample.conv"),
    (r"(^|\.)mid_(block_1|block_2|attn_1)(?=\.|$)", r"\1mid.\2"),
)


class CheckpointMismatchError(ValueError):
  """A checkpoint does not match the model built from the config."""


@dataclass(frozen=True)
class Buffer:
  """A non-trainable tensor the PyTorch module stores but flax derives (e.g. the LFQ codebook)."""

  make: Callable[[], np.ndarray]


@dataclass(frozen=True)
class ParamMapping:
  """How one model family's flax params correspond to its PyTorch state dict."""

  module_rules: Rules
  buffers: Mapping[str, Buffer] = field(default_factory=dict)
  # rewrites of the complete PyTorch key (e.g. 'mha.in_proj.weight' -> 'mha.in_proj_weight')
  key_rules: Rules = ()
  # released-file key prefix -> model key prefix (e.g. generator 'token_emb' -> 'input_proj')
  renames: Mapping[str, str] = field(default_factory=dict)

  def torch_key(self, flax_path: tuple[str, ...]) -> str:
    module = ".".join(flax_path[:-1])
    for pattern, repl in self.module_rules:
      module = re.sub(pattern, repl, module)
    # Standard leaves are renamed; a raw parameter (e.g. 'pos_emb') keeps its own name.
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(flax_path[-1], flax_path[-1])
    key = f"{module}.{leaf}" if module else leaf
    for pattern, repl in self.key_rules:
      key = re.sub(pattern, repl, key)
    return key


def torch_to_flax_array(flax_path: tuple[str, ...], value: np.ndarray, flax_ndim: int) -> np.ndarray:
  if flax_path[-1] == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if flax_path[-1] == "kernel" and value.ndim == 2:
    return np.transpose(value, (1, 0))
  return value


def flax_to_torch_array(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if flax_path[-1] == "kernel" and value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))
  if flax_path[-1] == "kernel" and value.ndim == 2:
    return np.transpose(value, (1, 0))
  return value


def _torch_shape_of(flax_path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  return flax_to_torch_array(flax_path, np.empty(shape, dtype=np.uint8)).shape


def expected_torch_shapes(mapping: ParamMapping, abstract_params) -> "OrderedDict[str, tuple[int, ...]]":
  """PyTorch key -> shape for every parameter of the flax model (buffers included)."""
  out = OrderedDict()
  for path, leaf in traverse_util.flatten_dict(abstract_params).items():
    out[mapping.torch_key(path)] = _torch_shape_of(path, tuple(leaf.shape))
  for key, buf in mapping.buffers.items():
    out[key] = tuple(buf.make().shape)
  return out


# (stored dtype, model dtype) pairs that convert exactly; any other difference is refused by name.
LOSSLESS_WIDENING = frozenset({(np.dtype(np.float16), np.dtype(np.float32)),
                               (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32))})


def _renamed(key: str, renames: Mapping[str, str]) -> str:
  """``key`` with the first matching prefix of ``renames`` (released-file prefix -> model prefix) replaced."""
  for old, new in renames.items():
    if key == old or key.startswith(old + "."):
      return new + key[len(old):]
  return key


def _renamed_keys(state: Mapping[str, np.ndarray], renames: Mapping[str, str]) -> "OrderedDict[str, str]":
  """Model key -> the state's key."""
  return OrderedDict((_renamed(key, renames), key) for key in state)


def _apply_renames(state: Mapping[str, np.ndarray], renames: Mapping[str, str]) -> "OrderedDict[str, np.ndarray]":
  return OrderedDict((_renamed(key, renames), value) for key, value in state.items())


def torch_state_to_flax(state: Mapping[str, np.ndarray], abstract_params, mapping: ParamMapping, *,
                        source: str = "checkpoint") -> dict:
  """Strictly converts a PyTorch-layout state dict into a flax param tree.

  Args:
    state: key -> array, PyTorch names and layouts (e.g. from ``read_state_dict``).
    abstract_params: the model's (unboxed) params or their ShapeDtypeStructs,
      e.g. from ``jax.eval_shape(model.init, ...)``.
  Raises:
    CheckpointMismatchError listing every missing key, unexpected key, shape
    mismatch (with both shapes) and buffer whose values differ from what the
    config implies.
  """
  renamed = _renamed_keys(state, mapping.renames)  # model key -> key in the state
  flat = traverse_util.flatten_dict(abstract_params)
  by_key = {mapping.torch_key(path): path for path in flat}
  missing = [k for k in list(by_key) + list(mapping.buffers) if k not in renamed]
  unexpected = [k for k in renamed if k not in by_key and k not in mapping.buffers]
  problems = [f"missing key {k!r} (the model has it, the {source} does not)" for k in missing]
  problems += [f"unexpected key {k!r} {shape_of(state, renamed[k])} (in the {source}, not in the model)"
               for k in unexpected]
  # Shapes and dtypes first, from the file's header: nothing is read from a file that cannot match.
  wanted = {key: (_torch_shape_of(path, tuple(flat[path].shape)), np.dtype(flat[path].dtype))
            for key, path in by_key.items()}
  wanted.update((key, (tuple(buf.make().shape), None)) for key, buf in mapping.buffers.items())
  widened = []
  for key, (want_shape, want_dtype) in wanted.items():
    if key not in renamed:
      continue
    got_shape, got_dtype = shape_of(state, renamed[key]), dtype_of(state, renamed[key])
    if got_shape != want_shape:
      what = "buffer " if key in mapping.buffers else ""
      problems.append(f"shape mismatch for {what}{key!r}: {source} has {got_shape}, model expects {want_shape}")
    elif want_dtype is not None and got_dtype != want_dtype:
      if (got_dtype, want_dtype) in LOSSLESS_WIDENING:
        widened.append(key)
      else:
        problems.append(f"dtype mismatch for {key!r}: {source} has {got_dtype}, model expects {want_dtype} "
                        "(only float16/bfloat16 -> float32 converts without loss)")
  for key, buf in mapping.buffers.items():  # small, and of the shape the config implies: read now
    if key in renamed and shape_of(state, renamed[key]) == wanted[key][0]:
      if not np.array_equal(np.asarray(state[renamed[key]]), buf.make()):
        problems.append(f"buffer {key!r} differs from the value this config implies")
  if problems:
    raise CheckpointMismatchError(
        f"{source} does not match the model ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
  if widened:
    print(f"note: {source}: {len(widened)} tensor(s) stored as {dtype_of(state, renamed[widened[0]])} were "
          "widened to float32 (lossless)", flush=True)
  converted = {}
  for key, path in by_key.items():
    value = np.asarray(state[renamed[key]])
    converted[path] = torch_to_flax_array(path, value, value.ndim).astype(flat[path].dtype)
  return traverse_util.unflatten_dict(converted)


def flax_to_torch_state(params, mapping: ParamMapping, key_order: Sequence[str] | None = None,
                        released_names: bool = True) -> "OrderedDict[str, np.ndarray]":
  """Flax params -> PyTorch-layout state dict (buffers regenerated).

  ``key_order`` (e.g. the order of the file the params came from) fixes the
  order of the output; keys not in it follow in model order. With
  ``released_names`` the inverse of ``mapping.renames`` is applied, so the
  result has the names of the released files.
  """
  out = OrderedDict()
  for path, value in traverse_util.flatten_dict(params).items():
    out[mapping.torch_key(path)] = np.array(flax_to_torch_array(path, np.asarray(value)), order="C", copy=None)
  for key, buf in mapping.buffers.items():
    out[key] = buf.make()
  if released_names and mapping.renames:
    out = _apply_renames(out, {new: old for old, new in mapping.renames.items()})
  if key_order is not None:
    ordered = OrderedDict((k, out[k]) for k in key_order if k in out)
    ordered.update((k, v) for k, v in out.items() if k not in ordered)
    out = ordered
  return out
