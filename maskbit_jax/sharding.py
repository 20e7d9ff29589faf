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
    ("vocab", "tensor"),
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


def logical_to_sharding(logical_tree, mesh: Mesh, rules=RULES):
  """Maps a tree of logical PartitionSpecs (or boxed params) to NamedShardings."""
  specs = nn.get_partition_spec(logical_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding for a batch-major array of rank ``ndim`` (batch split, rest replicated)."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), RULES)
  return NamedSharding(mesh, PartitionSpec(*spec))
