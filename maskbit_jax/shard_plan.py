"""A folder of output shards that a rerun resumes: fixed record ranges, a marker per finished shard, a plan.

A set of ``num_records`` records is cut into shards of ``shard_size`` records (the last one shorter),
``tokens-SSSSS-of-NNNNN.array_record``; the layout depends on neither the process count nor the batch,
so any number of processes writes the same files. A shard counts as finished only once its marker
``<shard>.done`` (records and bytes, written atomically after the shard itself) agrees with the shard on
disk; anything else (a shard without a marker, a size that differs) is written again. ``plan.json``,
written before any shard, holds the arguments that decide the content: a rerun with other arguments is
refused, naming the first that differs. Every path goes through :mod:`maskbit_jax.paths` (``gs://`` works).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping

from maskbit_jax import paths

PLAN_FILE = "plan.json"
MARKER_SUFFIX = ".done"


def shard_ranges(num_records: int, shard_size: int) -> list[tuple[int, int]]:
  """``[start, stop)`` of every shard; at least one shard, so an empty set still has a file."""
  if shard_size < 1:
    raise ValueError(f"the shard size must be >= 1, got {shard_size}")
  starts = range(0, max(num_records, 1), shard_size)
  return [(s, min(s + shard_size, num_records)) for s in starts]


def shard_name(index: int, count: int) -> str:
  return f"tokens-{index:05d}-of-{count:05d}.array_record"


def flatten(tree: Mapping, prefix: str = "") -> dict:
  """Nested dicts -> ``{"a.b.c": leaf}`` (lists and tuples as JSON lists, so a reloaded plan compares equal)."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = json.loads(json.dumps(v))
  return out


def difference(held: Mapping, wanted: Mapping) -> str | None:
  """The first argument (sorted, dotted) whose value differs between two plans, as ``key: old vs new``."""
  a, b = flatten(held), flatten(wanted)
  for key in sorted(set(a) | set(b)):
    if a.get(key, "<unset>") != b.get(key, "<unset>"):
      return f"{key} was {a.get(key, '<unset>')!r}, this run has {b.get(key, '<unset>')!r}"
  return None


def read_json(path: str) -> dict | None:
  if not paths.exists(path):
    return None
  return json.loads(paths.resolve(path).read_text())


def check_plan(out_dir: str, plan: Mapping) -> bool:
  """Whether ``out_dir`` already holds (part of) this plan's set; raises ``FileExistsError`` naming the first
  difference when it holds another set."""
  held = read_json(paths.join(out_dir, PLAN_FILE))
  if held is None:
    if any(True for _ in _set_files(out_dir)):
      raise FileExistsError(f"{out_dir} holds token shards but no {PLAN_FILE} (written by an older pretokenize); "
                            "pass --overwrite to replace them")
    return False
  diff = difference(held, plan)
  if diff is not None:
    raise FileExistsError(f"{out_dir} holds another token set ({diff}); rerun with its arguments to resume it, "
                          "or pass --overwrite to replace it")
  return True


def _set_files(out_dir: str):
  root = paths.resolve(out_dir)
  if not root.is_dir():
    return
  for p in root.iterdir():
    if p.name.startswith("tokens-") or p.name in (PLAN_FILE, "meta.json"):
      yield p


def clear(out_dir: str) -> None:
  """Removes a previous set's shards, markers, plan and meta (``--overwrite``); other files stay."""
  for p in list(_set_files(out_dir)):
    p.unlink()


def write_plan(out_dir: str, plan: Mapping) -> None:
  paths.makedirs(out_dir)
  paths.write_text_atomic(paths.join(out_dir, PLAN_FILE), json.dumps(plan, indent=1, sort_keys=True))


def marker_path(shard: str) -> str:
  return shard + MARKER_SUFFIX


def is_done(shard: str, records: int) -> bool:
  """Whether ``shard`` was finished with ``records`` records: its marker exists and its size matches."""
  try:
    mark = read_json(marker_path(shard))
  except ValueError:  # a marker is written atomically; a broken one is somebody else's file: redo
    return False
  if mark is None or int(mark.get("records", -1)) != records or not paths.exists(shard):
    return False
  return paths.file_size(shard) == int(mark["bytes"])


def local_staging(shard: str) -> str:
  """Where a shard is written before it is published: next to it locally (same file system, so the rename
  is atomic), in a local temporary folder for a URL (the ArrayRecord writer takes local files)."""
  if paths.is_url(shard):
    fd, staged = tempfile.mkstemp(prefix="pretokenize-", suffix="-" + os.path.basename(shard))
    os.close(fd)
    return staged
  return paths.as_str(shard) + ".tmp"


def publish(staged: str, shard: str, records: int) -> None:
  """Moves the finished ``staged`` file to ``shard``, then writes its marker (so a marker implies the shard)."""
  size = os.path.getsize(staged)
  if paths.is_url(shard):
    with open(staged, "rb") as f:
      paths.resolve(shard).write_bytes(f.read())
    os.remove(staged)
  else:
    os.replace(staged, paths.as_str(shard))
  paths.write_text_atomic(marker_path(shard), json.dumps(dict(records=int(records), bytes=int(size))))


def discard(staged: str) -> None:
  if os.path.exists(staged):
    os.remove(staged)
