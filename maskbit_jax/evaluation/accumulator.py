"""Host accumulators of evaluation metrics: the common base, the rows this process owns, the merge over hosts.

Every metric accumulator (``FeatureStats``, ``InceptionScore``,
``InceptionScoreSplits``, ``ReconstructionMetrics``, ``CodebookStats``) keeps
running sums on the host in float64 / int64, so no metric ever needs all images
or all features at once. ``update`` adds a batch in place (and returns the
accumulator), ``merge`` returns a new accumulator with both inputs' samples, and
``allgather_merge`` combines one accumulator per process. Every ``update`` takes
an optional boolean ``mask`` ``[B]`` so that the padding images of the last,
padded batch are not counted. Inputs may be numpy arrays, process-local
``jax.Array``s, or global ones sharded along the batch (each process then adds
only the rows it owns, see ``process_local_rows``), so that ``allgather_merge``
counts every sample exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils


def process_local_rows(x) -> np.ndarray:
  """This process's rows of a batch as a numpy array, each row owned by exactly one process.

  Numpy inputs and process-local ``jax.Array``s are returned whole. For a global
  ``jax.Array`` spread over several processes, the rows held by this process's
  devices are returned, and a block of rows held by several processes (replicated)
  is kept only by the lowest process index holding it, so that accumulating every
  process's rows and ``allgather_merge`` count each sample once. Only the batch
  (first) axis may be sharded.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)

  def bounds(index) -> tuple[int, int]:
    for axis, sl in enumerate(index[1:], start=1):
      if sl.indices(x.shape[axis])[:2] != (0, x.shape[axis]):
        raise ValueError(f"only the batch axis may be sharded across processes, got sharding {x.sharding}")
    start, stop, _ = index[0].indices(x.shape[0])
    return start, stop

  owner: dict[tuple[int, int], int] = {}
  for device, index in x.sharding.devices_indices_map(x.shape).items():
    key = bounds(index)
    owner[key] = min(owner.get(key, device.process_index), device.process_index)
  mine = sorted(k for k, p in owner.items() if p == jax.process_index())
  blocks: dict[tuple[int, int], np.ndarray] = {}
  for shard in x.addressable_shards:
    key = bounds(shard.index)
    if key in mine and key not in blocks:
      blocks[key] = np.asarray(shard.data)
  if not mine:
    return np.zeros((0,) + tuple(x.shape[1:]), x.dtype)
  return np.concatenate([blocks[k] for k in mine], axis=0)


def batch_mask(mask, batch: int) -> np.ndarray | None:
  """This process's rows of a per-image ``mask`` ``[batch]`` as booleans (None stays None)."""
  if mask is None:
    return None
  mask = process_local_rows(mask)
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape [{batch}] (one flag per image), got {mask.shape}")
  return mask.astype(bool)


class Accumulator:
  """State as named numpy arrays, so that ``allgather_merge`` can move any accumulator."""

  def state_dict(self) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def with_state(self, state: Mapping[str, np.ndarray]):
    """A new accumulator with this one's settings and the given state."""
    raise NotImplementedError

  def merge(self, other):
    raise NotImplementedError

  def _check_same_kind(self, other) -> None:
    if type(other) is not type(self):
      raise TypeError(f"cannot merge {type(self).__name__} with {type(other).__name__}")


def allgather_merge(accumulator: Accumulator) -> Accumulator:
  """Every process's accumulator merged into one (the same result on every process).

  All processes must call this with the same kind of accumulator. The state is
  sent bit-exactly (float64/int64 arrays travel as raw 32-bit words, so nothing is
  rounded to float32 when x64 is off), shapes may differ between processes (an
  accumulator that saw no data, or a different number of Inception Score splits),
  and each process's samples enter once: the result is process 0's state merged
  with process 1's, and so on. With one process it returns an equal copy.
  Memory: every process holds all processes' states during the merge.
  """
  state = accumulator.state_dict()
  names = list(state)
  arrays = [np.asarray(state[n]) for n in names]  # tobytes() is C order; keeps 0-d arrays 0-d
  ndims = [a.ndim for a in arrays]
  shape_vec = np.array([1] + [d for a in arrays for d in a.shape], np.int32)  # leading 1: never empty
  all_shapes = np.asarray(multihost_utils.process_allgather(shape_vec))

  def shapes_of(row):
    out, pos = [], 1
    for nd in ndims:
      out.append(tuple(int(v) for v in row[pos:pos + nd]))
      pos += nd
    return out

  per_process_shapes = [shapes_of(row) for row in all_shapes]
  nbytes = [sum(int(np.prod(s)) * a.itemsize for s, a in zip(shapes, arrays)) for shapes in per_process_shapes]
  words = max(1, -(-max(nbytes) // 4))
  buf = np.zeros((words * 4,), np.uint8)
  payload = b"".join(a.tobytes() for a in arrays)
  buf[:len(payload)] = np.frombuffer(payload, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buf.view(np.uint32)))

  merged = None
  for row, shapes in zip(gathered, per_process_shapes):
    raw = np.ascontiguousarray(row).view(np.uint8)
    pos, part_state = 0, {}
    for name, shape, a in zip(names, shapes, arrays):
      size = int(np.prod(shape)) * a.itemsize
      part_state[name] = np.frombuffer(raw[pos:pos + size].tobytes(), a.dtype).reshape(shape)
      pos += size
    part = accumulator.with_state(part_state)
    merged = part if merged is None else merged.merge(part)
  return merged
