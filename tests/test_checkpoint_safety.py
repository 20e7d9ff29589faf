"""Hostile and damaged weight files and folders (issue 15, items 1, 2, 8 and 9): no code runs, memory
stays bounded, nothing is cast silently, every refusal names the file and the problem."""

from __future__ import annotations

import io
import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest

import maskbit_jax
from maskbit_jax import checkpointing
from maskbit_jax.cli import convert as convert_cli
from maskbit_jax.convert import conversion
from maskbit_jax.convert import torch_pickle as tp
from maskbit_jax.convert.checkpoint_files import read_state_dict, write_state_dict
from conftest import tokenizer_config

REPO = pathlib.Path(__file__).resolve().parents[1]
# What reading a hostile file may add to a fresh interpreter's peak memory (each file below declares >= 200 MB).
MEMORY_BOUND = 64 << 20


def _smallest_tokenizer(fixture_configs, golden) -> str:
  names = [n for n in fixture_configs["configs"] if n.startswith("tokenizer") and (golden / f"{n}.bin").is_file()]
  return min(names, key=lambda n: (golden / f"{n}.bin").stat().st_size)


# ---------------------------------------------------------------------------
# 1. A shared folder's description is data.


def _folder_naming_a_config_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  folder = tmp_path / "shared_ckpt"
  (folder / checkpointing.PARAMS_DIR).mkdir(parents=True)
  marker = tmp_path / "code_ran"
  (folder / "cfg.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef get_config():\n  return {{}}\n")
  (folder / checkpointing.META_FILE).write_text(json.dumps({"format_version": 1, "kind": "tokenizer",
                                                            "config": str(folder / "cfg.py")}))
  return folder, marker


def test_folder_naming_a_config_file_runs_nothing(tmp_path, fixture_configs, golden):
  folder, marker = _folder_naming_a_config_file(tmp_path)
  with pytest.raises(checkpointing.CheckpointMetaError, match="'config' must be the config itself"):
    convert_cli.main(["--checkpoint", str(folder), "--out", str(tmp_path / "x.bin")])
  assert not marker.exists() and not (tmp_path / "x.bin").exists()
  with pytest.raises(checkpointing.CheckpointMetaError, match="shared_ckpt"):
    maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, _smallest_tokenizer(fixture_configs, golden)), folder)
  assert not marker.exists()


@pytest.mark.parametrize("meta,match", [
    ({"kind": "tokenizer", "config": ["a"]}, "'config' must be the config itself"),
    ({"kind": "rootkit", "config": {}}, "'kind' is 'rootkit'"),
    (["not", "a", "mapping"], "expected a JSON object"),
])
def test_bad_descriptions_are_named(tmp_path, meta, match):
  (tmp_path / checkpointing.PARAMS_DIR).mkdir()
  (tmp_path / checkpointing.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(checkpointing.CheckpointMetaError, match=match):
    checkpointing.read_meta(tmp_path)
  (tmp_path / checkpointing.META_FILE).write_bytes(b"\xff{")
  with pytest.raises(checkpointing.CheckpointMetaError, match="not valid JSON"):
    checkpointing.read_meta(tmp_path)


# ---------------------------------------------------------------------------
# 2. Bounded memory: hostile files measured in a fresh interpreter.


def _pickle_with_views(views) -> bytes:
  """A state-dict pickle: for each ``(key, size, stride, numel)`` a float32 tensor viewing storage "0"."""
  w = tp._PickleWriter()
  w.global_("collections", "OrderedDict")
  w.call_no_args()
  w.mark()
  for key, size, stride, numel in views:
    w.str_(key)
    w.global_("torch._utils", "_rebuild_tensor_v2")
    w.mark()
    w.mark()
    w.str_("storage")
    w.global_("torch", "FloatStorage")
    w.str_("0")
    w.str_("cpu")
    w.int_(numel)
    w.tuple_()
    w.persid()
    w.int_(0)
    w.int_tuple(size)
    w.int_tuple(stride)
    w.false()
    w.global_("collections", "OrderedDict")
    w.call_no_args()
    w.tuple_()
    w.reduce()
  w.setitems()
  return w.stop()


def _pickle_with_view(size, stride, numel: int) -> bytes:
  return _pickle_with_views([("w", size, stride, numel)])


def _zip(path: pathlib.Path, records: dict[str, bytes], compressed: tuple[str, ...] = ()) -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in records.items():
      method = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
      archive.writestr(zipfile.ZipInfo(f"archive/{name}"), data, compress_type=method)
  return path


def _deflated_zeros_member(archive: zipfile.ZipFile, name: str, header: bytes, nbytes: int) -> None:
  """A member of ``header`` + ``nbytes`` zeros, compressed while streaming (never held in memory)."""
  info = zipfile.ZipInfo(name)
  info.compress_type = zipfile.ZIP_DEFLATED
  with archive.open(info, "w", force_zip64=True) as out:
    out.write(header)
    chunk = bytes(1 << 20)
    for _ in range(nbytes // len(chunk)):
      out.write(chunk)


def _hostile_files(tmp_path: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
  """name -> (file, expected message) of files that declare hundreds of MB in a few kB."""
  big = (16384, 32768)  # 2 GiB of float32
  files = {}
  files["stride0"] = (_zip(tmp_path / "stride0.bin", {"data.pkl": _pickle_with_view(big, (0, 0), 1),
                                                     "data/0": bytes(4), "version": b"3\n"}), "overlaps itself")
  files["overlap"] = (_zip(tmp_path / "overlap.bin", {"data.pkl": _pickle_with_view(big, (1, 1), 32768 + 16384),
                                                     "data/0": bytes(4 * (32768 + 16384)), "version": b"3\n"}),
                      "overlaps itself")
  n = 1 << 26  # 256 MiB of float32 zeros, deflated to ~250 kB
  with zipfile.ZipFile(tmp_path / "deflated_record.bin", "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr(zipfile.ZipInfo("archive/data.pkl"), _pickle_with_view((n,), (1,), n))
    _deflated_zeros_member(archive, "archive/data/0", b"", 4 * n)
  files["deflated_record"] = (tmp_path / "deflated_record.bin", "is compressed")
  files["deflated_pickle"] = (_zip(tmp_path / "deflated_pickle.bin", {"data.pkl": _pickle_with_view((4,), (1,), 4),
                                                                     "data/0": bytes(16)}, compressed=("data.pkl",)),
                              "is compressed")
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
  with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
    _deflated_zeros_member(archive, "w.npy", header.getvalue(), 4 * n)
  files["npz_bomb"] = (tmp_path / "bomb.npz", "refused rather than inflated")
  liar = io.BytesIO()
  np.lib.format.write_array_header_1_0(liar, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
  with zipfile.ZipFile(tmp_path / "liar.npz", "w") as archive:
    archive.writestr("w.npy", liar.getvalue() + bytes(64))
  files["npz_header_lies"] = (tmp_path / "liar.npz", "declares shape")
  legacy = (pickle_dumps(tp._LEGACY_MAGIC) + pickle_dumps(tp._LEGACY_PROTOCOL) + pickle_dumps({})
            + _pickle_with_view((n,), (1,), n) + pickle_dumps(["0"]) + struct.pack("<q", n) + bytes(64))
  (tmp_path / "legacy_count.pt").write_bytes(legacy)
  files["legacy_count"] = (tmp_path / "legacy_count.pt", "more than the file holds")
  memo = b"\x80\x02}r\xff\xff\xff\xff."  # EMPTY_DICT, LONG_BINPUT 0xffffffff: a 32 GB memo in the C unpickler
  files["memo_bomb"] = (_zip(tmp_path / "memo.bin", {"data.pkl": memo}), "memo entry")
  return files


def pickle_dumps(obj) -> bytes:
  import pickle

  return pickle.dumps(obj, protocol=2)


_PROBE = textwrap.dedent("""
    import json, resource, sys
    from maskbit_jax.convert.checkpoint_files import read_state_dict
    out = {}
    for name, path in json.loads(sys.argv[1]).items():
      before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
      try:
        state = read_state_dict(path)
        for key in state:
          state[key]
        out[name] = ["loaded", "", 0]
      except ValueError as e:
        out[name] = [type(e).__name__, str(e), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before]
    print(json.dumps(out))
""")


def test_hostile_files_cost_little_memory_and_are_named(tmp_path):
  files = _hostile_files(tmp_path)
  for name, (path, _) in files.items():
    assert path.stat().st_size < 1 << 20, name
  proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps({k: str(p) for k, (p, _) in files.items()})],
                        capture_output=True, text=True, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, (path, message) in files.items():
    kind, text, grew = results[name]
    assert kind != "loaded", name
    assert path.name in text and message in text, (name, text)
    assert "\n" not in text, (name, text)
    assert grew < MEMORY_BOUND, (name, grew)


def test_shapes_are_checked_before_any_tensor_is_read(tmp_path, fixture_configs, golden, monkeypatch):
  name = _smallest_tokenizer(fixture_configs, golden)
  state = dict(read_state_dict(golden / f"{name}.bin"))
  key = next(k for k in state if state[k].ndim == 4)
  state[key] = np.zeros(state[key].shape[:-1] + (state[key].shape[-1] + 1,), state[key].dtype)
  tp.write_torch_file(tmp_path / "wrong.bin", state)
  reads = []
  original = tp._Records.tensor
  monkeypatch.setattr(tp._Records, "tensor", lambda self, *a: reads.append(a) or original(self, *a))
  with pytest.raises(maskbit_jax.CheckpointMismatchError, match=f"shape mismatch for {key!r}"):
    maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, name), tmp_path / "wrong.bin")
  assert reads == []  # not one tensor (the LFQ codebook buffer aside, which is not a parameter) was read


def test_tensors_sharing_one_storage_past_the_bound_are_refused(tmp_path):
  """A pickle naming one storage in many tensors: each would be a copy; the total is bounded by the file."""
  numel = 1 << 16  # 400 x 256 kB from one 256 kB storage
  pkl = _pickle_with_views([(f"w{i}", (numel,), (1,), numel) for i in range(400)])
  path = _zip(tmp_path / "shared.bin", {"data.pkl": pkl, "data/0": bytes(4 * numel)})
  state = read_state_dict(path)
  assert len(state) == 400 and state.shape_of("w0") == (numel,)
  with pytest.raises(ValueError, match=r"shared\.bin.*more than .* bytes"):
    [state[k] for k in state]


# ---------------------------------------------------------------------------
# 8. dtypes: only lossless widening, named.


@pytest.fixture(scope="module")
def small_tokenizer(fixture_configs, golden):
  name = _smallest_tokenizer(fixture_configs, golden)
  return tokenizer_config(fixture_configs, name), dict(read_state_dict(golden / f"{name}.bin"))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_files_widen_losslessly_with_a_note(tmp_path, small_tokenizer, dtype, capsys):
  cfg, state = small_tokenizer
  half = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in state.items()}
  tp.write_torch_file(tmp_path / "half.bin", half)
  tok = maskbit_jax.load_tokenizer(cfg, tmp_path / "half.bin")
  assert "widened to float32 (lossless)" in capsys.readouterr().out
  got = conversion.converter(maskbit_jax.load_config(cfg), "tokenizer").to_torch(
      jax_to_numpy(tok.params), list(half))
  for key, value in half.items():
    assert np.array_equal(got[key], value.astype(np.float32)), key
  out = conversion.import_checkpoint(maskbit_jax.load_config(cfg), str(tmp_path / "half.bin"), str(tmp_path / "ck"))
  assert checkpointing.read_meta(out)["kind"] == "tokenizer"


def jax_to_numpy(tree):
  return checkpointing.to_numpy(tree)


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.bool_, np.complex64])
def test_other_dtypes_are_refused_by_key_and_dtype(tmp_path, small_tokenizer, dtype):
  cfg, state = small_tokenizer
  key = next(k for k, v in state.items() if v.dtype == np.float32 and v.ndim == 4)
  bad = dict(state)
  bad[key] = state[key].astype(dtype)
  tp.write_torch_file(tmp_path / "bad.bin", bad)
  want = f"dtype mismatch for {key!r}: .*bad.bin has {np.dtype(dtype)}, model expects float32"
  with pytest.raises(maskbit_jax.CheckpointMismatchError, match=want):
    maskbit_jax.load_tokenizer(cfg, tmp_path / "bad.bin")
  with pytest.raises(maskbit_jax.CheckpointMismatchError, match=want):
    conversion.import_checkpoint(maskbit_jax.load_config(cfg), str(tmp_path / "bad.bin"), str(tmp_path / "ck"))
  assert not (tmp_path / "ck").exists()


def test_round_trip_names_the_dtype():
  with pytest.raises(conversion.RoundTripError, match="'w' is float64 in the file but float32"):
    conversion.verify_round_trip({"w": np.zeros(2, np.float64)}, {"w": np.zeros(2, np.float32)}, "f.bin")


# ---------------------------------------------------------------------------
# 9. Damaged files: one named line each.


def _patch_central_directory(data: bytes, name: bytes, field_offset: int, value: int) -> bytes:
  """Sets a 4-byte field of ``name``'s central-directory entry (20: compressed size, 24: uncompressed)."""
  at = data.index(b"PK\x01\x02")
  while True:
    name_len = struct.unpack("<H", data[at + 28:at + 30])[0]
    if data[at + 46:at + 46 + name_len] == name:
      break
    extra, comment = struct.unpack("<HH", data[at + 30:at + 34])
    at = data.index(b"PK\x01\x02", at + 46 + name_len + extra + comment)
  return data[:at + field_offset] + struct.pack("<I", value) + data[at + field_offset + 4:]


@pytest.mark.parametrize("field,value,message", [
    (24, 7, "declares 7 bytes uncompressed"),
    (20, 0xFFFFFF, "declares"),
    (16, 0x12345678, "CRC"),
])
def test_a_directory_that_lies_is_named(tmp_path, golden, fixture_configs, field, value, message):
  name = _smallest_tokenizer(fixture_configs, golden)
  data = (golden / f"{name}.bin").read_bytes()
  with zipfile.ZipFile(golden / f"{name}.bin") as archive:
    record = next(n for n in archive.namelist() if n.endswith("data.pkl"))
  path = tmp_path / "liar.bin"
  path.write_bytes(_patch_central_directory(data, record.encode(), field, value))
  with pytest.raises(ValueError) as err:
    [v for v in read_state_dict(path).values()]
  text = str(err.value)
  assert "liar.bin" in text and message in text and "\n" not in text, text


def test_a_corrupt_tensor_record_is_named(tmp_path, golden, fixture_configs):
  name = _smallest_tokenizer(fixture_configs, golden)
  data = bytearray((golden / f"{name}.bin").read_bytes())
  with zipfile.ZipFile(golden / f"{name}.bin") as archive:
    info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
  start = info.header_offset + 30 + len(info.filename) + len(info.extra)
  data[start + info.file_size // 2] ^= 0x40
  (tmp_path / "flipped.bin").write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"flipped\.bin.*fails its CRC-32 check"):
    maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, name), tmp_path / "flipped.bin")


def test_zip_records_are_refused_unless_stored_inside_the_file(tmp_path):
  path = _zip(tmp_path / "short.bin", {"data.pkl": _pickle_with_view((4,), (1,), 4), "data/0": bytes(16)})
  data = path.read_bytes()
  cut = data.index(b"archive/data/0") + len("archive/data/0") + 4  # inside record data/0's bytes
  (tmp_path / "short.bin").write_bytes(data[:cut])
  with pytest.raises(ValueError, match=r"short\.bin"):
    read_state_dict(tmp_path / "short.bin")


def test_export_checks_a_folder_against_its_own_config_first(tmp_path, fixture_configs, golden):
  """A folder whose arrays do not fit the model its config builds is refused from its metadata."""
  name = _smallest_tokenizer(fixture_configs, golden)
  cfg = maskbit_jax.load_config(tokenizer_config(fixture_configs, name))
  checkpointing.save_params(tmp_path / "odd", {"encoder": {"huge": np.zeros((3, 5), np.float32)}},
                            kind="tokenizer", config=cfg.to_dict())
  with pytest.raises(maskbit_jax.CheckpointMismatchError, match=r"(?s)odd does not match the model.*unexpected encoder/huge"):
    convert_cli.main(["--checkpoint", str(tmp_path / "odd"), "--out", str(tmp_path / "odd.bin")])
  assert not (tmp_path / "odd.bin").exists()


def test_exports_and_written_files_follow_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    out = checkpointing.save_params(tmp_path / "exp", {"w": np.zeros(2, np.float32)}, kind="tokenizer", config={})
    write_state_dict(tmp_path / "w.npz", {"w": np.zeros(2, np.float32)})
    write_state_dict(tmp_path / "w.safetensors", {"w": np.zeros(2, np.float32)})
  finally:
    os.umask(old)
  assert os.stat(out).st_mode & 0o777 == 0o755
  assert os.stat(tmp_path / "w.npz").st_mode & 0o777 == 0o644
  assert os.stat(tmp_path / "w.safetensors").st_mode & 0o777 == 0o644
