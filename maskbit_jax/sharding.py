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
from jax.experimental import mesh_utils
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
    ("layers", None),        # the leading axis of scanned blocks (models.stack): every device holds every layer
    # codebooks [codes, dim]
    ("codebook", None),
    ("code_dim", None),
)


def _axis_sizes(shape: dict[str, int] | None, what: str) -> list[int]:
  """A ``{axis: size}`` dict -> sizes in ``MESH_AXES`` order (missing axes: 1); at most one -1."""
  shape = dict(shape or {})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown {what} axes {sorted(unknown)}; known: {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one {what} axis may be -1, got {shape}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{what} sizes must be >= 1 (or one -1), got {shape}")
  return sizes


def _fill(sizes: list[int], devices: int, shape: dict, what: str) -> list[int]:
  """``sizes`` with its -1 filled in so that the product is ``devices``; a ValueError when it cannot be."""
  sizes = list(sizes)
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if devices % known:
      raise ValueError(f"{devices} devices do not divide over {what} {shape}")
    sizes[sizes.index(-1)] = devices // known
  if int(np.prod(sizes)) != devices:
    raise ValueError(f"{what} {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {devices}")
  return sizes


def granules(devices: Sequence[jax.Device]) -> tuple[str, list[list[jax.Device]]]:
  """The units joined by the slow network (DCN): TPU slices where the devices name more than one
  (``slice_index``), else processes (hosts). Returns the attribute used and the groups, in index order."""
  slices = {getattr(d, "slice_index", None) for d in devices}
  attr = "slice_index" if None not in slices and len(slices) > 1 else "process_index"
  groups: dict[int, list[jax.Device]] = {}
  for d in devices:
    groups.setdefault(getattr(d, attr), []).append(d)
  return attr, [groups[k] for k in sorted(groups)]


def create_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None, *,
                dcn_shape: dict[str, int] | None = None) -> Mesh:
  """Builds a named mesh over ``devices`` (default: all devices), laid out on the interconnect.

  ``shape`` maps mesh axis names to sizes within one slice (ICI); one size may be
  -1 and is filled in from the device count. Missing axes get size 1, so
  ``create_mesh()`` is pure data parallelism over every device. ``dcn_shape``
  (default: 1 each) splits axes across slices (TPU multi-slice) or, where the
  devices name no slices, across processes: axis ``a`` then has size
  ``shape[a] * dcn_shape[a]``, with the DCN part outermost, and ``shape`` is
  per slice. The device order comes from ``jax.experimental.mesh_utils``
  (the TPU torus; other platforms keep ``devices``' order).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = dict(shape or {"data": -1})
  sizes = _axis_sizes(shape, "mesh")
  dcn = _axis_sizes(dcn_shape, "DCN mesh")
  if -1 in dcn:
    raise ValueError(f"DCN mesh sizes must be given, not -1: {dcn_shape}")
  attr, groups = granules(devices)
  n_dcn = int(np.prod(dcn))
  if n_dcn == 1:
    if attr == "slice_index":
      raise ValueError(f"the devices span {len(groups)} slices: set runtime.dcn_mesh (e.g. data={len(groups)}) "
                       "to split an axis across them")
    sizes = _fill(sizes, len(devices), shape, "mesh")
    try:
      array = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    except (ValueError, AssertionError):
      if len(devices) == len(jax.devices()):
        raise
      array = np.asarray(devices).reshape(sizes)  # a subset (runtime.num_devices) need not form a torus
    return Mesh(array, MESH_AXES)
  unit = "slices" if attr == "slice_index" else "processes"
  if n_dcn != len(groups):
    raise ValueError(f"DCN mesh {dict(zip(MESH_AXES, dcn))} spans {n_dcn} {unit}, the devices are in "
                     f"{len(groups)} {unit}")
  per_group = {len(g) for g in groups}
  if len(per_group) > 1:
    raise ValueError(f"the {unit} hold different device counts {sorted(per_group)}; a DCN mesh needs equal ones")
  sizes = _fill(sizes, per_group.pop(), shape, f"mesh (per one of {len(groups)} {unit})")
  array = mesh_utils.create_hybrid_device_mesh(sizes, dcn, devices, process_is_granule=attr == "process_index",
                                               allow_split_physical_axes=True)
  return Mesh(array, MESH_AXES)


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
