"""Explicit name and layout maps between PyTorch state dicts and flax param trees.

A flax parameter path such as ``('encoder', 'down_2', 'res_blocks_0', 'conv1', 'kernel')``
maps to the PyTorch key ``encoder.down.2.res_blocks.0.conv1.weight`` through a
small, explicit table of regular expressions per model family; leaf layouts are
converted by one rule per leaf kind (conv kernels ``[O, I, kh, kw] <-> [kh, kw, I, O]``,
dense kernels ``[O, I] <-> [I, O]``, norm scales, embeddings and biases as they
are). Loading is strict: every key must be used, every parameter found, every
shape equal, and every problem is reported by name.

Deep stacks run under ``nn.scan``: their parameters are one sub-tree whose
leaves carry a leading layer axis. A ``LayerStack`` names that sub-tree and
the per-layer module names it replaces (``transformer_layers_{}_0``, the
layout of the PyTorch files and of checkpoints written before the scan); the
name map itself only ever sees per-layer trees, unstacked on the way out and
stacked again on the way in, both exact.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import jax
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
class LayerStack:
  """Params scanned over depth: every leaf under the top-level ``scope`` has a leading layer axis.

  Layer i of the child ``c`` of ``scope`` is the per-layer module ``names[c].format(i)``;
  the child ``""`` stands for the whole scope (``{"": "blocks_{}"}``).
  """

  scope: str
  names: Mapping[str, str]

  def split(self, path: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    """``(child, rest)`` of a stacked path, None for a path outside the stack."""
    if not path or path[0] != self.scope:
      return None
    if len(path) > 2 and path[1] in self.names:
      return path[1], path[2:]
    if "" in self.names:
      return "", path[1:]
    raise CheckpointMismatchError(f"{'/'.join(path)} is under the stack {self.scope!r} but in none of its "
                                  f"children {sorted(self.names)}")

  def join(self, per_layer_path: tuple[str, ...]) -> tuple[str, int, tuple[str, ...]] | None:
    """``(child, layer, rest)`` of a per-layer path (``transformer_layers_3_0/...``), None if not one."""
    for child, template in self.names.items():
      head, _, tail = template.partition("{}")
      name = per_layer_path[0] if per_layer_path else ""
      digits = name[len(head):len(name) - len(tail)] if tail else name[len(head):]
      if name.startswith(head) and name.endswith(tail) and digits.isdigit() and len(name) > len(head) + len(tail):
        return child, int(digits), per_layer_path[1:]
    return None


def _layers_of(leaf) -> list:
  """The per-layer slices of one stacked leaf: host arrays (views), or shapes for an abstract leaf."""
  if not hasattr(leaf, "__array__"):  # ShapeDtypeStruct, checkpoint metadata
    return [jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype)] * int(leaf.shape[0])
  host = np.asarray(leaf)
  return [host[i] for i in range(host.shape[0])]


def unstack_layers(params, stacks: Sequence[LayerStack]) -> dict:
  """A stacked param tree (arrays or ShapeDtypeStructs) -> the per-layer tree, in per-layer module order."""
  flat = traverse_util.flatten_dict(dict(params))
  out, pending = {}, {}
  for path, leaf in flat.items():
    stack = next((s for s in stacks if s.split(path) is not None), None)
    if stack is None:
      out[path] = leaf
      continue
    if stack.scope not in pending:
      pending[stack.scope] = []
      out[("__stack__", stack.scope)] = None  # the stack's place in the order
    pending[stack.scope].append((path, leaf))
  ordered = {}
  for path, leaf in out.items():
    if path[0] != "__stack__":
      ordered[path] = leaf
      continue
    stack = next(s for s in stacks if s.scope == path[1])
    items = [(stack.split(p), _layers_of(leaf)) for p, leaf in pending[path[1]]]
    for i in range(len(items[0][1])):
      for child in stack.names:
        for (c, rest), slices in items:
          if c == child:
            ordered[(stack.names[child].format(i),) + rest] = slices[i]
  return traverse_util.unflatten_dict(ordered)


def stack_layers(params, stacks: Sequence[LayerStack]) -> dict:
  """Inverse of ``unstack_layers``: per-layer modules -> one stacked sub-tree per stack (numpy arrays)."""
  flat = traverse_util.flatten_dict(dict(params))
  out, layers = {}, {}
  for path, leaf in flat.items():
    hit = next(((s, j) for s in stacks if (j := s.join(path)) is not None), None)
    if hit is None:
      out[path] = leaf
      continue
    stack, (child, i, rest) = hit
    stacked_path = (stack.scope,) + ((child,) if child else ()) + rest
    if stacked_path not in layers:
      out[stacked_path] = None
      layers[stacked_path] = {}
    layers[stacked_path][i] = leaf
  for path, by_layer in layers.items():
    if sorted(by_layer) != list(range(len(by_layer))):
      raise CheckpointMismatchError(f"{'/'.join(path)}: layers {sorted(by_layer)} are not 0..{len(by_layer) - 1}")
    out[path] = np.stack([np.asarray(by_layer[i]) for i in range(len(by_layer))])
  return traverse_util.unflatten_dict(out)


@dataclass(frozen=True)
class ParamMapping:
  """How one model family's flax params correspond to its PyTorch state dict."""

  module_rules: Rules
  buffers: Mapping[str, Buffer] = field(default_factory=dict)
  # rewrites of the complete PyTorch key (e.g. 'mha.in_proj.weight' -> 'mha.in_proj_weight')
  key_rules: Rules = ()
  # released-file key prefix -> model key prefix (e.g. generator 'token_emb' -> 'input_proj')
  renames: Mapping[str, str] = field(default_factory=dict)
  # sub-trees scanned over depth (leading layer axis) and the per-layer names the rules above see
  layer_stacks: Sequence[LayerStack] = ()

  def is_stacked(self, flax_path: tuple[str, ...]) -> bool:
    """True for a leaf with a leading layer axis (under one of ``layer_stacks``)."""
    return any(s.split(flax_path) is not None for s in self.layer_stacks)

  def per_layer(self, params) -> dict:
    """The tree with every stack split into per-layer modules (what ``torch_key`` names)."""
    return unstack_layers(params, self.layer_stacks) if self.layer_stacks else params

  def stacked(self, per_layer_params) -> dict:
    """Inverse of ``per_layer``."""
    return stack_layers(per_layer_params, self.layer_stacks) if self.layer_stacks else per_layer_params

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
  for path, leaf in traverse_util.flatten_dict(mapping.per_layer(abstract_params)).items():
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
  flat = traverse_util.flatten_dict(mapping.per_layer(abstract_params))
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
  return mapping.stacked(traverse_util.unflatten_dict(converted))


def flax_to_torch_state(params, mapping: ParamMapping, key_order: Sequence[str] | None = None,
                        released_names: bool = True) -> "OrderedDict[str, np.ndarray]":
  """Flax params -> PyTorch-layout state dict (buffers regenerated).

  ``key_order`` (e.g. the order of the file the params came from) fixes the
  order of the output; keys not in it follow in model order. With
  ``released_names`` the inverse of ``mapping.renames`` is applied, so the
  result has the names of the released files.
  """
  out = OrderedDict()
  for path, value in traverse_util.flatten_dict(mapping.per_layer(params)).items():
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
