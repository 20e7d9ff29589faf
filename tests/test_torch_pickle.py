"""Tests for maskbit_jax.convert.torch_pickle: torch-free, code-free checkpoint reading/writing.

Why these tests: the reader is the only thing between a downloaded checkpoint
and arbitrary code execution, and the writer's files must load in real torch.
Everything runs without torch; the cross-checks against torch itself are
skipped when it is absent (``pytest.importorskip``), and the legacy format is
covered in CI by a small committed file that torch once wrote
(``tests/data/legacy_format_small.pt``, see ``make_legacy_format_small.py``).
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import re
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

import proc_wait
from conftest import golden_path

from maskbit_jax.convert import torch_pickle
from maskbit_jax.convert.torch_pickle import (
    ALLOWED_GLOBALS,
    TorchDtype,
    UnsafeCheckpointError,
    read_torch_file,
    write_torch_file,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).resolve().parent / "data"
LEGACY_FIXTURE = DATA / "legacy_format_small.pt"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _golden_dir() -> pathlib.Path:
  return golden_path()


def _golden_bins() -> list:
  bins = sorted(_golden_dir().glob("*.bin"))
  if bins:
    return [pytest.param(p, id=p.name) for p in bins]
  reason = f"no golden *.bin fixtures at {_golden_dir()} (set MASKBIT_GOLDEN to the fixture folder)"
  return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="golden-missing")]


def _native(arr: np.ndarray) -> np.ndarray:
  """C-contiguous, native byte order: what the reader returns for ``arr``."""
  arr = np.asarray(arr, order="C")
  if arr.dtype.byteorder == ">":
    arr = arr.astype(arr.dtype.newbyteorder("="))
  return arr


def _assert_bitwise_equal(got: np.ndarray, want: np.ndarray, name: str = "") -> None:
  want = _native(want)
  assert isinstance(got, np.ndarray), name
  assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  assert got.tobytes() == want.tobytes(), name


# ---------------------------------------------------------------------------
# Golden fixtures (files written by torch.save).


@pytest.mark.parametrize("bin_path", _golden_bins())
def test_golden_bin_matches_state_npz(bin_path):
  npz_path = bin_path.with_name(bin_path.stem + "_state.npz")
  if not npz_path.is_file():
    pytest.skip(f"{npz_path} missing")
  state = read_torch_file(bin_path)
  assert isinstance(state, collections.OrderedDict)
  with np.load(npz_path, allow_pickle=False) as ref:
    assert list(state) == list(ref.files)
    for name in ref.files:
      got = state[name]
      _assert_bitwise_equal(got, ref[name], name)
      assert got.flags.owndata and got.flags.c_contiguous, name


# ---------------------------------------------------------------------------
# Hostile files: nothing may run.


class _SystemCall:
  """Pickles as a call to os.system (GLOBAL 'posix system' on Linux): a classic exploit."""

  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def _call_pickle(module: str, name: str, arg: str) -> bytes:
  """Protocol-2 bytes for ``module.name(arg)``, spelled by hand so any global name can be used."""
  data = arg.encode("utf-8")
  return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(data).to_bytes(4, "little") + data
          + b"\x85R.")


def _touch_code(marker: pathlib.Path) -> str:
  return f"open({str(marker)!r}, 'w').close()"


def _write_zip(path: pathlib.Path, records: dict[str, bytes], folder: str = "archive") -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in records.items():
      archive.writestr(f"{folder}/{name}", data)
  return path


def _write_legacy(path: pathlib.Path, main_pickle: bytes, sys_info_pickle: bytes | None = None) -> pathlib.Path:
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  path.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
                   + (sys_info_pickle or pickle.dumps(sys_info, protocol=2)) + main_pickle
                   + pickle.dumps([], protocol=2))
  return path


HOSTILE_GLOBALS = [
    ("os", "system", "touch {marker}"),
    ("posix", "system", "touch {marker}"),
    ("nt", "system", "touch {marker}"),
    ("builtins", "exec", "{code}"),
    ("builtins", "eval", "{code}"),
    ("__builtin__", "eval", "{code}"),
    ("builtins", "getattr", "{code}"),
    ("builtins", "__import__", "os"),
    ("subprocess", "getoutput", "touch {marker}"),
    ("subprocess", "Popen", "touch {marker}"),
    ("collections", "OrderedDict.__init__.__globals__", "x"),
    ("torch._utils", "_rebuild_tensor_v2.__globals__", "x"),
    ("torch.serialization", "load", "{marker}"),
    ("numpy", "load", "{marker}"),
]


@pytest.mark.parametrize("module,name,arg", HOSTILE_GLOBALS, ids=lambda v: str(v))
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_hostile_global_is_refused_and_not_run(tmp_path, layout, module, name, arg):
  marker = tmp_path / "pwned"
  payload = _call_pickle(module, name, arg.format(marker=marker, code=_touch_code(marker)))
  if layout == "zip":
    path = _write_zip(tmp_path / "evil.bin", {"data.pkl": payload, "byteorder": b"little"})
  else:
    path = _write_legacy(tmp_path / "evil.pt", payload)
  with pytest.raises(UnsafeCheckpointError) as info:
    read_torch_file(path)
  message = str(info.value)
  assert f"'{module}.{name}'" in message
  assert str(path) in message
  assert "not executed" in message and "tried to call" in message
  assert info.value.global_name == f"{module}.{name}"
  assert isinstance(info.value, ValueError)
  assert not marker.exists()


def test_hostile_payload_really_runs_under_plain_pickle(tmp_path):
  """Positive control: the bytes used above do execute when unpickled normally."""
  marker = tmp_path / "pwned"
  pickle.Unpickler(io.BytesIO(_call_pickle("builtins", "exec", _touch_code(marker)))).load()
  assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_reduce_class_calling_os_system_is_refused(tmp_path, layout, protocol):
  marker = tmp_path / "pwned"
  payload = pickle.dumps(collections.OrderedDict(weight=_SystemCall(f"touch {marker}")), protocol=protocol)
  if layout == "zip":
    path = _write_zip(tmp_path / "evil.bin", {"data.pkl": payload})
  else:
    path = _write_legacy(tmp_path / "evil.pt", payload)
  with pytest.raises(UnsafeCheckpointError, match=re.escape(f"'{os.system.__module__}.system'")):
    read_torch_file(path)
  assert not marker.exists()


def test_hostile_call_in_legacy_header_pickle_is_refused(tmp_path):
  """Every pickle in a legacy file (not only the main one) goes through the allowlist."""
  marker = tmp_path / "pwned"
  header = pickle.dumps(_SystemCall(f"touch {marker}"), protocol=2)
  path = _write_legacy(tmp_path / "evil.pt", pickle.dumps({}, protocol=2), sys_info_pickle=header)
  with pytest.raises(UnsafeCheckpointError, match="system"):
    read_torch_file(path)
  assert not marker.exists()


@pytest.mark.parametrize("payload", [
    # BUILD with a dict state on the allowlisted OrderedDict stand-in.
    b"\x80\x02ccollections\nOrderedDict\n}X\x02\x00\x00\x00fnK\x01sb.",
    # BUILD with a (None, slotstate) tuple: would setattr on the stand-in.
    b"\x80\x02ccollections\nOrderedDict\nN}X\x02\x00\x00\x00fnK\x01s\x86b.",
    # BUILD on a torch dtype stand-in.
    b"\x80\x02ctorch\nfloat32\nN}X\x04\x00\x00\x00nameX\x01\x00\x00\x00Os\x86b.",
], ids=["dict-state", "slot-state", "dtype-slot-state"])
def test_allowlisted_objects_cannot_be_tampered_with(tmp_path, payload):
  path = _write_zip(tmp_path / "tamper.bin", {"data.pkl": payload})
  with pytest.raises(ValueError, match=re.escape(str(path))):
    read_torch_file(path)
  assert TorchDtype("float32").numpy_dtype == np.float32
  write_torch_file(tmp_path / "ok.pt", {"x": np.ones(2, np.float32)})
  assert read_torch_file(tmp_path / "ok.pt")["x"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("args_pickle", [
    b"cbuiltins\nbytearray\nJ\x00\x00\x00\x40\x85R.",  # bytearray(1 GiB): memory bomb
    b"cnumpy\ndtype\nX\x01\x00\x00\x00O\x85R.",  # object dtype
    b"c_codecs\nencode\nX\x01\x00\x00\x00xX\x06\x00\x00\x00rot_13\x86R.",  # non-text codec
], ids=["bytearray-int", "numpy-object-dtype", "codecs-rot13"])
def test_allowed_callables_refuse_dangerous_arguments(tmp_path, args_pickle):
  path = _write_zip(tmp_path / "bad.bin", {"data.pkl": b"\x80\x02" + args_pickle})
  with pytest.raises(ValueError, match=re.escape(str(path))):
    read_torch_file(path)


def test_allowlist_is_only_state_dict_building_blocks():
  prefixes = ("collections.", "torch.", "_codecs.", "builtins.", "numpy.")
  assert all(name.startswith(prefixes) for name in ALLOWED_GLOBALS)
  for bad in ("builtins.eval", "builtins.exec", "builtins.getattr", "builtins.__import__", "os.system",
              "posix.system", "subprocess.Popen", "torch.load", "numpy.load", "builtins.object",
              "copyreg._reconstructor", "torch.storage._load_from_bytes", "torch.storage.TypedStorage"):
    assert bad not in ALLOWED_GLOBALS, bad


def test_module_never_calls_pickle_load_or_imports_torch():
  text = pathlib.Path(torch_pickle.__file__).read_text()
  # Needles split so that this file does not itself match the repo's grep for them.
  for needle in ("pickle" + ".load(", "torch" + ".load("):
    assert needle not in text, needle
  assert not re.search(r"^\s*(import torch|from torch)", text, re.M)


def test_reading_does_not_import_torch():
  code = ("import sys; from maskbit_jax.convert.torch_pickle import read_torch_file; "
          f"read_torch_file({str(LEGACY_FIXTURE)!r}); assert 'torch' not in sys.modules")
  assert proc_wait.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# ---------------------------------------------------------------------------
# numpy objects inside checkpoints (Lightning-style dicts).


def test_numpy_scalars_and_arrays_in_pickle(tmp_path):
  obj = {"epoch": 3, "score": np.float64(0.5), "flag": np.bool_(True), "arr": np.arange(6, dtype=">i4").reshape(2, 3),
         "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "nested": [(1, "a"), {"b": None}],
         "blob": b"\x00\xff", "tags": {"x", "y"}, "frozen": frozenset([1]), "z": 1 + 2j, "cut": slice(1, 5, 2),
         "buf": bytearray(b"ab")}
  path = _write_zip(tmp_path / "ckpt.ckpt", {"data.pkl": pickle.dumps(obj, protocol=2)})
  got = read_torch_file(path)
  assert got.keys() == obj.keys()
  for key in ("epoch", "score", "flag", "nested", "blob", "tags", "frozen", "z", "cut", "buf"):
    assert got[key] == obj[key] and type(got[key]) is type(obj[key]), key
  np.testing.assert_array_equal(got["arr"], obj["arr"])
  np.testing.assert_array_equal(got["fortran"], obj["fortran"])
  assert got["score"].dtype == np.float64


def test_numpy_object_array_is_refused(tmp_path):
  payload = pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=2)
  path = _write_zip(tmp_path / "obj.bin", {"data.pkl": payload})
  with pytest.raises(ValueError, match="numpy dtype 'O.*' is not a plain"):
    read_torch_file(path)


# ---------------------------------------------------------------------------
# Write -> read round trips (no torch).


def _sample_state() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "z_first": rng.standard_normal((2, 3)).astype(np.float32),
      "f64": rng.standard_normal((3,)),
      "f16": rng.standard_normal((2, 2)).astype(np.float16),
      "bf16": rng.standard_normal((4,)).astype(ml_dtypes.bfloat16),
      "i32": np.array([-(2**31), 0, 2**31 - 1], np.int32),
      "i64": np.array([[-(2**63), 2**40], [2**63 - 1, 5]], np.int64),
      "u8": np.array([0, 7, 255], np.uint8),
      "mask": np.array([[True, False], [False, True]]),
      "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
      "strided": np.arange(20, dtype=np.int64)[::3],
      "scalar_f32": np.array(1.5, np.float32),
      "scalar_i64": np.array(-3, np.int64),
      "scalar_bool": np.array(True),
      "empty": np.zeros((0, 4), np.float32),
      "nan_payload": np.array([0x7FC00001, 0xFFC12345], np.uint32).view(np.float32),
      "big_endian": np.arange(4, dtype=">f8"),
      "a_last": np.ones((1, 1, 1), np.float64),
  }


def _extra_dtype_state() -> dict[str, np.ndarray]:
  return {
      "i8": np.array([-128, 127], np.int8),
      "i16": np.array([-(2**15), 2**15 - 1], np.int16),
      "u16": np.array([0, 2**16 - 1], np.uint16),
      "u32": np.array([0, 2**32 - 1], np.uint32),
      "u64": np.array([0, 2**64 - 1], np.uint64),
      "c64": np.array([1 + 2j, -3.5j], np.complex64),
      "c128": np.array([[1 - 1j]], np.complex128),
      "f8e4m3": np.array([1.0, -2.0, 0.5], ml_dtypes.float8_e4m3fn),
      "f8e5m2": np.array([1.0, -4.0], ml_dtypes.float8_e5m2),
  }


@pytest.mark.parametrize("make_state", [_sample_state, _extra_dtype_state])
def test_write_read_round_trip(tmp_path, make_state):
  state = make_state()
  path = tmp_path / "model.pt"
  write_torch_file(path, state)
  got = read_torch_file(path)
  assert isinstance(got, collections.OrderedDict)
  assert list(got) == list(state)
  for name, want in state.items():
    _assert_bitwise_equal(got[name], want, name)
    assert got[name].flags.owndata or got[name].size == 0


def test_written_storages_are_64_byte_aligned(tmp_path):
  """torch.save aligns storages so torch can mmap them on load; ours must too."""
  path = tmp_path / "aligned.pt"
  write_torch_file(path, {f"k{i}": np.arange(i + 1, dtype=np.float32) for i in range(9)})
  with zipfile.ZipFile(path) as archive:
    infos = archive.infolist()
    assert infos[0].filename == "aligned/data.pkl"
    assert infos[-1].filename == "aligned/version"
    with open(path, "rb") as f:
      for info in infos:
        if "/data/" in info.filename:
          f.seek(info.header_offset + 26)
          name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
          assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def test_write_accepts_array_likes_and_rejects_bad_entries(tmp_path):
  write_torch_file(tmp_path / "a.pt", {"lst": [1.0, 2.0], "py_int": 3})
  got = read_torch_file(tmp_path / "a.pt")
  _assert_bitwise_equal(got["lst"], np.array([1.0, 2.0]))
  _assert_bitwise_equal(got["py_int"], np.array(3))
  with pytest.raises(TypeError, match="no torch equivalent"):
    write_torch_file(tmp_path / "b.pt", {"obj": np.array(["x"], dtype=object)})
  with pytest.raises(TypeError, match="keys must be str"):
    write_torch_file(tmp_path / "b.pt", {1: np.zeros(1)})
  assert not (tmp_path / "b.pt").exists()


def test_failed_write_leaves_existing_file_intact(tmp_path, monkeypatch):
  path = tmp_path / "model.pt"
  write_torch_file(path, {"old": np.arange(3, dtype=np.float32)})
  before = path.read_bytes()

  def broken_write(f, archive_name, arrays):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise RuntimeError("disk full")

  monkeypatch.setattr(torch_pickle, "_write_zip", broken_write)
  with pytest.raises(RuntimeError, match="disk full"):
    write_torch_file(path, {"new": np.zeros(5, np.float32)})
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp file left
  monkeypatch.undo()
  write_torch_file(path, {"new": np.zeros(5, np.float32)})
  assert list(read_torch_file(path)) == ["new"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_written_file_gets_umask_permissions(tmp_path):
  path = tmp_path / "perm.pt"
  write_torch_file(path, {"x": np.zeros(1)})
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_big_endian_zip_is_byteswapped(tmp_path):
  """A file saved on a big-endian machine says so in ``byteorder``; values must still match."""
  state = {"f32": np.array([1.5, -2.0], np.float32), "bf16": np.array([3.0, -0.25], ml_dtypes.bfloat16),
           "c64": np.array([1 + 2j], np.complex64), "i64": np.array([2**40 + 3], np.int64),
           "mask": np.array([True, False])}
  little = tmp_path / "little.pt"
  write_torch_file(little, state)
  big = tmp_path / "big.pt"
  with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename.endswith("/byteorder"):
        data = b"big"
      elif "/data/" in info.filename:
        arr = list(state.values())[int(info.filename.rsplit("/", 1)[1])]
        unit = arr.dtype.itemsize // (2 if arr.dtype.kind == "c" else 1)
        data = np.frombuffer(data, np.uint8).reshape(-1, unit)[:, ::-1].tobytes()
      dst.writestr(info.filename, data)
  got = read_torch_file(big)
  for name, want in state.items():
    _assert_bitwise_equal(got[name], want, name)


def test_zip_folder_name_may_vary(tmp_path):
  write_torch_file(tmp_path / "orig.pt", {"w": np.arange(3, dtype=np.int32)})
  renamed = tmp_path / "renamed.pt"
  with zipfile.ZipFile(tmp_path / "orig.pt") as src, zipfile.ZipFile(renamed, "w") as dst:
    for info in src.infolist():
      dst.writestr(info.filename.replace("orig/", "something_else/", 1), src.read(info))
  assert read_torch_file(renamed)["w"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------
# Clear errors for broken files.


def test_not_a_torch_file(tmp_path):
  for name, data in (("text.pt", b"hello, world"), ("empty.pt", b"")):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not a PyTorch checkpoint"):
      read_torch_file(path)


def test_plain_pickle_is_not_a_torch_file(tmp_path):
  path = tmp_path / "plain.pkl"
  path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*magic number"):
    read_torch_file(path)


def test_truncated_zip(tmp_path):
  path = tmp_path / "model.pt"
  write_torch_file(path, {"w": np.arange(1000, dtype=np.float32)})
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*truncated"):
    read_torch_file(path)


def _rewrite_zip(src: pathlib.Path, dst: pathlib.Path, change) -> None:
  with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
    for info in a.infolist():
      data = change(info.filename, a.read(info))
      if data is not None:
        b.writestr(info.filename, data)


def test_missing_and_short_storage_records(tmp_path):
  good = tmp_path / "good.pt"
  write_torch_file(good, {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)})
  missing = tmp_path / "missing.pt"
  _rewrite_zip(good, missing, lambda name, data: None if name.endswith("data/1") else data)
  with pytest.raises(ValueError, match=re.escape(str(missing)) + ".*'missing/data/1'.*missing|"
                     + re.escape(str(missing)) + ".*good/data/1.*missing"):
    read_torch_file(missing)
  short = tmp_path / "short.pt"
  _rewrite_zip(good, short, lambda name, data: data[:5] if name.endswith("data/0") else data)
  with pytest.raises(ValueError, match=re.escape(str(short)) + ".*data/0.*5 bytes, expected 16"):
    read_torch_file(short)


def test_zip_without_data_pkl(tmp_path):
  path = _write_zip(tmp_path / "other.zip", {"readme.txt": b"hi"})
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*data.pkl"):
    read_torch_file(path)


def test_tensor_past_end_of_storage(tmp_path):
  """A size/stride that would read beyond the storage must fail, not read stray memory."""
  pkl = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
         b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x03\x85K\x01\x85\x89ccollections\nOrderedDict\n"
         b")RtR.")
  path = _write_zip(tmp_path / "oob.pt", {"data.pkl": pkl, "data/0": b"\x00" * 8})
  with pytest.raises(ValueError, match="needs 12 bytes but storage '0' has 8"):
    read_torch_file(path)


def test_truncated_legacy_file(tmp_path):
  path = tmp_path / "cut.pt"
  path.write_bytes(LEGACY_FIXTURE.read_bytes()[:-10])
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*truncated"):
    read_torch_file(path)


# ---------------------------------------------------------------------------
# The committed legacy-format file (written once by torch; read here without it).

LEGACY_EXPECTED = collections.OrderedDict([
    ("weight", np.arange(12, dtype=np.float32).reshape(3, 4)),
    ("weight_t", np.arange(12, dtype=np.float32).reshape(3, 4).T),
    ("tail", np.arange(6, 12, dtype=np.float32)),
    ("half", np.array([1.5, -2.0, 65504.0], np.float16)),
    ("bf16", np.array([1.0, -0.5, 3.0], ml_dtypes.bfloat16)),
    ("ids", np.array([[1, -2], [3, 2**40]], np.int64)),
    ("count", np.array(7, np.int32)),
    ("mask", np.array([True, False, True])),
    ("pixels", np.array([0, 255, 7], np.uint8)),
    ("double", np.array([0.1, -1e300], np.float64)),
    ("u16", np.array([1, 65535], np.uint16)),
    ("param", np.array([0.25, 0.5], np.float32)),
])


def test_legacy_fixture_reads_without_torch():
  got = read_torch_file(LEGACY_FIXTURE)
  assert isinstance(got, collections.OrderedDict)
  assert list(got) == list(LEGACY_EXPECTED)
  for name, want in LEGACY_EXPECTED.items():
    _assert_bitwise_equal(got[name], want, name)
    assert got[name].flags.owndata and got[name].flags.c_contiguous, name


# ---------------------------------------------------------------------------
# Cross-checks with real torch (skipped where torch is not installed).


def _torch_to_numpy(tensor) -> np.ndarray:
  torch = pytest.importorskip("torch")
  tensor = tensor.detach().contiguous()
  special = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
             torch.float8_e5m2: ml_dtypes.float8_e5m2}
  if tensor.dtype in special:
    raw = tensor.reshape(-1).view(torch.uint8).numpy()
    return raw.view(special[tensor.dtype]).reshape(tuple(tensor.shape))
  return tensor.numpy()


@pytest.mark.parametrize("make_state", [_sample_state, _extra_dtype_state])
def test_torch_loads_our_file_weights_only(tmp_path, make_state):
  torch = pytest.importorskip("torch")
  state = make_state()
  path = tmp_path / "ours.pt"
  write_torch_file(path, state)
  for mmap in (False, True):
    loaded = torch.load(path, weights_only=True, mmap=mmap)
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(state)
    for name, want in state.items():
      assert isinstance(loaded[name], torch.Tensor)
      _assert_bitwise_equal(_torch_to_numpy(loaded[name]), want, name)


def _torch_checkpoint():
  torch = pytest.importorskip("torch")
  gen = torch.Generator().manual_seed(0)
  base = torch.randn(4, 5, generator=gen)
  state = collections.OrderedDict([
      ("w", base),
      ("w_t", base.t()),  # non-contiguous view
      ("window", base.view(-1)[7:15].view(2, 4)),  # shares w's storage at offset 7
      ("every_other", base.view(-1)[1::2]),
      ("half", torch.randn(3, generator=gen).half()),
      ("bf16", torch.randn(2, 3, generator=gen).bfloat16()),
      ("f64", torch.randn(2, generator=gen).double()),
      ("i64", torch.tensor([-(2**40), 3])),
      ("i32", torch.tensor([[1, -2]], dtype=torch.int32)),
      ("i16", torch.tensor([-7], dtype=torch.int16)),
      ("i8", torch.tensor([-128, 5], dtype=torch.int8)),
      ("u8", torch.tensor([250, 1], dtype=torch.uint8)),
      ("u16", torch.tensor([65535, 2], dtype=torch.int32).to(torch.uint16)),
      ("mask", torch.tensor([True, False])),
      ("c64", torch.tensor([1 + 2j], dtype=torch.complex64)),
      ("scalar", torch.tensor(2.5)),
      ("empty", torch.zeros(0, 3)),
      ("param", torch.nn.Parameter(torch.ones(2, 2))),
  ])
  return {
      "state_dict": state,
      "epoch": 3,
      "hyper_parameters": {"lr": 1e-3, "betas": (0.9, 0.99), "name": "maskbit"},
      "blob": b"\x00\xff",
      "tags": {"a", "b"},
      "dtype": torch.float16,
      "size": torch.Size([2, 3]),
      "device": torch.device("cpu"),
      "np_scalar": np.float64(0.25),
      "np_array": np.arange(4, dtype=np.int16),
      "same": state["w"],
  }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_we_read_torch_save_files(tmp_path, zip_format):
  torch = pytest.importorskip("torch")
  ckpt = _torch_checkpoint()
  path = tmp_path / "torch.ckpt"
  torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
  got = read_torch_file(path)
  assert list(got) == list(ckpt)
  assert list(got["state_dict"]) == list(ckpt["state_dict"])
  for name, tensor in ckpt["state_dict"].items():
    _assert_bitwise_equal(got["state_dict"][name], _torch_to_numpy(tensor), name)
    assert got["state_dict"][name].flags.owndata or tensor.numel() == 0, name
  assert got["same"] is got["state_dict"]["w"]  # one tensor saved twice stays one array
  assert got["epoch"] == 3 and got["hyper_parameters"] == ckpt["hyper_parameters"]
  assert got["blob"] == b"\x00\xff" and got["tags"] == {"a", "b"}
  assert got["dtype"] == TorchDtype("float16") and got["dtype"].numpy_dtype == np.float16
  assert got["size"] == (2, 3) and got["device"] == "cpu"
  assert got["np_scalar"] == 0.25 and got["np_scalar"].dtype == np.float64
  _assert_bitwise_equal(got["np_array"], ckpt["np_array"])


def test_legacy_fixture_matches_its_generator_script():
  """The committed file holds what the script documents (compared with the script's own tensors).

  Not via ``torch.load``: torch 2.13's legacy loader cannot read back the uint16
  tensor it wrote (UntypedStorage has no ``dtype``), while our reader can.
  """
  pytest.importorskip("torch")
  sys.path.insert(0, str(DATA))
  try:
    import make_legacy_format_small  # noqa: PLC0415 - the script lives in tests/data
  finally:
    sys.path.remove(str(DATA))
  expected = make_legacy_format_small.make_state()
  got = read_torch_file(LEGACY_FIXTURE)
  assert list(got) == list(expected) == list(LEGACY_EXPECTED)
  for name, tensor in expected.items():
    _assert_bitwise_equal(got[name], _torch_to_numpy(tensor), name)
    _assert_bitwise_equal(_torch_to_numpy(tensor), LEGACY_EXPECTED[name], name)
