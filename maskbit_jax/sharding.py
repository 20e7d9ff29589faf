"""Logical axis names and the one table that maps them onto mesh axes.

Every parameter and every pinned activation in maskbit_jax carries logical
axis names (``nn.with_logical_partitioning`` / ``nn.with_logical_constraint``).
Which mesh axis a logical axis lands on is decided here, and only here, so a
new mesh layout is one edit to ``RULES`` (or a config override), never an edit
to a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or None: replicated). One table for the package.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("height", None),
    ("width", None),
    ("length", None),
    ("channels", None),
    # conv kernels [kh, kw, in, out]
    ("kernel_height", None),
    ("kernel_width", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    # norms and biases over channels: small, replicated
    ("norm", None),
    # dense layers / transformer
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", "tensor"),       # packed [q; k; v] projection outputs
    ("attn_out", "tensor"),  # input features of the attention output projection
    ("vocab", "tensor"),
    ("bits", None),          # bit features of a token
    ("classes", None),       # class-embedding rows
    ("fourier", None),       # fixed Fourier features of a scalar (BAR mask-ratio embedding)
    # codebooks [codes, dim]
    ("codebook", None),
    ("code_dim", None),
)


def create_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a named mesh over ``devices`` (default: all devices).

  ``shape`` maps mesh axis names to sizes; one size may be -1 and is filled in
  from the device count. Missing axes get size 1, so ``create_mesh()`` is pure
  data parallelism over every device.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = dict(shape or {"data": -1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; known: {MESH_AXES}")
  sizes = [shape.get(a, 1) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide over mesh {shape}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Replicates every dimension the mesh axes would not divide evenly (e.g. a 3-channel conv_out)."""
  fitted = [axes if size % _axis_size(mesh, axes) == 0 else None
            for axes, size in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape)]
  return PartitionSpec(*fitted)


def logical_to_sharding(boxed_tree, mesh: Mesh, rules=RULES):
  """Boxed (logically partitioned) params or their abstract values -> a tree of NamedShardings.

  Dimensions that the assigned mesh axes do not divide are replicated instead
  of failing, so one rules table serves every model size and mesh.
  """
  is_boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)

  def one(leaf):
    value = leaf.unbox() if is_boxed(leaf) else leaf
    names = leaf.names if is_boxed(leaf) else (None,) * len(value.shape)
    spec = PartitionSpec(*nn.logical_to_mesh_axes(names, rules))
    return NamedSharding(mesh, _fit_spec(spec, value.shape, mesh))

  return jax.tree.map(one, boxed_tree, is_leaf=is_boxed)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding for a batch-major array of rank ``ndim`` (batch split, rest replicated)."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), RULES)
  return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def optimizer_state_sharding(opt_abstract, params_abstract, param_shardings, mesh: Mesh):
  """Shardings of an optax state: every sub-tree shaped like the params (Adam moments, EMA) follows them.

  Everything else (step counters, scalars) is replicated.
  """
  param_struct = jax.tree.structure(params_abstract)

  def is_param_tree(x):
    try:
      return jax.tree.structure(x) == param_struct
    except Exception:
      return False

  rep = replicated(mesh)
  return jax.tree.map(lambda x: param_shardings if is_param_tree(x) else jax.tree.map(lambda _: rep, x),
                      opt_abstract, is_leaf=is_param_tree)


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch axis is split (the product of the mesh axes ``batch`` maps to)."""
  axes = dict(RULES)["batch"]
  return _axis_size(mesh, axes)


class BatchNotDivisibleError(ValueError):
  """A batch that the mesh's batch axes do not split into equal shares (named with both sizes)."""


def pad_batch(arrays: Sequence, mesh: Mesh, *, pad: bool = True) -> tuple[list[np.ndarray], int]:
  """Batch-major arrays (one leading size ``n``) made splittable over the mesh's batch axes (``data`` x
  ``fsdp``): with ``pad``, rows repeating each array's last row up to the next multiple (cut off again by the
  caller: ``out[:n]``); without, :class:`BatchNotDivisibleError` for a batch that does not divide.
  Returns ``(arrays, n)``."""
  arrays = [np.asarray(a) for a in arrays]
  n = arrays[0].shape[0]
  if any(a.shape[0] != n for a in arrays):
    raise ValueError(f"batch arrays of different lengths {[a.shape[0] for a in arrays]}")
  if n == 0:
    raise ValueError("empty batch")
  ways = data_parallel_size(mesh)
  extra = (-n) % ways
  if extra and not pad:
    raise BatchNotDivisibleError(f"a batch of {n} does not split over the mesh's {ways} batch shards "
                                 f"(data x fsdp of {dict(mesh.shape)}): pass a multiple of {ways}, or pad")
  if extra:
    arrays = [np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) for a in arrays]
  return arrays, n
