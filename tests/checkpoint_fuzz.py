"""Mutation fuzzing of the checkpoint reader, run in a subprocess per batch (``python tests/checkpoint_fuzz.py``).

Each variant is a seeded mutation of a source file (a golden ``.bin``, the legacy fixture, a
``.safetensors`` or an ``.npz``): bytes flipped, set, overwritten with extreme 4/8-byte values,
truncated, deleted, inserted or duplicated, half of them inside the file's structure (headers,
zip directory, pickle); and, for zip files, the pickle mutated with its CRC-32 fixed up so that the
mutation reaches the unpickler. Each variant is read with ``read_state_dict`` and every tensor
materialised. Outcomes:

* ``identical``: the same keys, dtypes and bytes as the source;
* ``error``: a ValueError (or subclass) or FileNotFoundError whose message names the file;
* ``different``: a well-formed state dict (str keys, numpy arrays) that differs from the source;
  allowed only where the format has no checksum over the mutated bytes (legacy ``.pt``,
  ``.safetensors``, and the CRC-fixed pickle variants);
* ``failure``: anything else (another exception type, a MemoryError, an unnamed message).

The worker prints one JSON object: the outcome counts, up to 20 failures, and the batch's peak
resident memory above its baseline (taken after reading every source once).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import struct
import sys
import zipfile

import numpy as np

STRICT_SUFFIXES = (".bin", ".npz")  # zip formats: every byte that is read is under a CRC-32


def write_legacy(path: str, state) -> None:
  """``state`` in torch's legacy (non-zip) layout, with the pickle our zip writer emits."""
  from maskbit_jax.convert import torch_pickle as tp

  entries, raws = [], []
  for name, value in state.items():
    raw, shape, torch_name = tp._prepare_array(name, value)
    entries.append((name, shape, torch_name, raw.nbytes))
    raws.append((raw, tp._TORCH_DTYPES[torch_name].itemsize, torch_name in tp._TORCH_TO_LEGACY_STORAGE))
  sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
  out = io.BytesIO()
  for obj in (tp._LEGACY_MAGIC, tp._LEGACY_PROTOCOL, sys_info):
    out.write(pickle.dumps(obj, protocol=2))
  out.write(tp._state_dict_pickle(entries))
  out.write(pickle.dumps([str(i) for i in range(len(entries))], protocol=2))
  for raw, itemsize, typed in raws:
    out.write(struct.pack("<q", raw.nbytes // itemsize if typed else raw.nbytes))
    out.write(raw.tobytes())
  with open(path, "wb") as f:
    f.write(out.getvalue())


def load_all(path: str) -> dict:
  from maskbit_jax.convert.checkpoint_files import read_state_dict

  state = read_state_dict(path)
  return {key: state[key] for key in state}


def same(a: dict, b: dict) -> bool:
  return list(a) == list(b) and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)


def _structure_regions(data: bytes) -> list[tuple[int, int]]:
  regions = [(0, min(len(data), 2048)), (max(0, len(data) - 2048), len(data))]
  if data.startswith(b"PK\x03\x04"):
    try:
      with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
          if info.filename.endswith((".pkl", ".npy")):
            start = info.header_offset
            regions.append((start, min(len(data), start + 30 + len(info.filename) + 256 + info.compress_size)))
    except zipfile.BadZipFile:
      pass
  return regions


_EXTREMES = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
  """One seeded byte-level mutation."""
  buf = bytearray(data)
  if rng.random() < 0.5:
    lo, hi = _structure_regions(data)[rng.integers(len(_structure_regions(data)))]
  else:
    lo, hi = 0, len(buf)
  pos = int(rng.integers(lo, max(lo + 1, hi)))
  pos = min(pos, max(0, len(buf) - 1))
  op = rng.integers(8)
  if op == 0:  # flip 1-8 bits
    for _ in range(int(rng.integers(1, 9))):
      p = min(len(buf) - 1, pos + int(rng.integers(0, 16)))
      buf[p] ^= 1 << int(rng.integers(8))
  elif op == 1:  # random bytes
    n = int(rng.integers(1, 9))
    buf[pos:pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
  elif op == 2:  # an extreme 2/4/8-byte value (lengths, offsets, counts, memo indices)
    width = int(rng.choice([2, 4, 8]))
    value = int(rng.choice(_EXTREMES)) & ((1 << (8 * width)) - 1)
    buf[pos:pos + width] = value.to_bytes(width, "little" if rng.random() < 0.5 else "big")
  elif op == 3:  # truncate
    del buf[pos:]
  elif op == 4:  # delete a range
    del buf[pos:pos + int(rng.integers(1, 512))]
  elif op == 5:  # insert random bytes
    buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
  elif op == 6:  # duplicate a range
    n = int(rng.integers(1, 256))
    buf[pos:pos] = buf[pos:pos + n]
  else:  # zero a range
    n = int(rng.integers(1, 4096))
    buf[pos:pos + n] = bytes(len(buf[pos:pos + n]))
  return bytes(buf)


def mutate_pickle(data: bytes, rng: np.random.Generator) -> bytes | None:
  """A zip checkpoint whose data.pkl is mutated and re-stored with a correct CRC-32."""
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      records = [(info, archive.read(info)) for info in archive.infolist()]
  except zipfile.BadZipFile:
    return None
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
    for info, body in records:
      if info.filename.endswith("data.pkl"):
        body = mutate(body, rng)
      archive.writestr(info.filename, body)
  return out.getvalue()


def classify(path: str, original: dict, checksummed: bool) -> tuple[str, str]:
  try:
    got = load_all(path)
  except (ValueError, FileNotFoundError) as e:
    cause = e.__cause__ or e.__context__
    if isinstance(cause, MemoryError):
      return "failure", f"MemoryError behind {type(e).__name__}: {e}"[:300]
    first = str(e).splitlines()[0] if str(e) else ""
    if os.path.basename(path) not in first or len(first) < len(path) + 8:
      return "failure", f"unnamed {type(e).__name__}: {first!r}"[:300]
    return "error", type(e).__name__
  except BaseException as e:  # noqa: BLE001 - the point is to see every other kind of failure
    return "failure", f"{type(e).__name__}: {e}"[:300]
  if same(got, original):
    return "identical", ""
  if not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in got.items()):
    return "failure", "loaded something that is not a state dict of arrays"
  if checksummed:
    return "failure", "loaded different tensors without an error although every read byte is checksummed"
  return "different", ""


def _maxrss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def run(sources: list[str], seed: int, count: int, scratch: str) -> dict:
  originals = {src: load_all(src) for src in sources}
  blobs = {src: open(src, "rb").read() for src in sources}
  baseline = _maxrss_bytes()
  rng = np.random.default_rng(seed)
  counts: dict[str, int] = {}
  by_format: dict[str, dict[str, int]] = {}
  failures: list[str] = []
  for i in range(count):
    src = sources[i % len(sources)]
    suffix = os.path.splitext(src)[1]
    variant, checksummed = None, suffix in STRICT_SUFFIXES
    if suffix == ".bin" and rng.random() < 0.25:
      variant, checksummed = mutate_pickle(blobs[src], rng), False
    if variant is None:
      variant = mutate(blobs[src], rng)
    path = os.path.join(scratch, f"variant_{i % 4}{suffix}")
    with open(path, "wb") as f:
      f.write(variant)
    outcome, detail = classify(path, originals[src], checksummed)
    counts[outcome] = counts.get(outcome, 0) + 1
    key = f"{suffix}{'' if checksummed or suffix not in STRICT_SUFFIXES else ' (pickle, CRC fixed)'}"
    by_format.setdefault(key, {}).setdefault(outcome, 0)
    by_format[key][outcome] += 1
    if outcome == "failure" and len(failures) < 20:
      failures.append(f"variant {i} of {os.path.basename(src)} (seed {seed}): {detail}")
  return dict(counts=counts, by_format=by_format, failures=failures, peak_above_baseline=_maxrss_bytes() - baseline,
              largest_source=max(len(b) for b in blobs.values()))


if __name__ == "__main__":
  seed, count, scratch, *files = sys.argv[1:]
  print(json.dumps(run(files, int(seed), int(count), scratch)))
