"""Reading and writing PyTorch-layout state dicts in every format the released models use.

* ``.bin`` / ``.pt`` / ``.pth``: ``torch.save`` of a plain ordered dict (read
  without torch, never executing code from the file);
* ``.ckpt``: a Lightning checkpoint; its inner ``state_dict`` is used and the
  ``loss.*`` entries (the original training's LPIPS and discriminator) dropped;
* ``.safetensors``;
* ``*_state.npz``: the same tensors under the same names, for readers without torch;
* a directory holding ``pytorch_model.bin`` (the reference's ``save_pretrained``).

Reading is lazy and bounded: :func:`read_state_dict` returns a :class:`StateDict` whose shapes and
dtypes are known from the file's header before any tensor byte is read, so the strict check against
the model (``torch_state_to_flax``) runs first and a file that cannot match costs no more than its
header. No format is decompressed beyond the size it declares, and every declared size is checked
against the bytes present (see ``docs/reliability.md``).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import struct
import tempfile
import weakref
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping

import numpy as np

from maskbit_jax import paths
from maskbit_jax.convert import torch_pickle

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
LIGHTNING_DROP_PREFIXES = ("loss.",)


def _resolve(path: str) -> str:
  if os.path.isdir(path):
    candidate = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(candidate):
      return candidate
    raise FileNotFoundError(f"{path} is a directory without pytorch_model.bin")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  return path


class StateDict(MutableMapping):
  """``{name: array}`` in file order, read on access: ``state[k]`` reads (and checks) that tensor.

  Entries may be replaced, added or removed like a dict's (an assigned array is kept in memory).

  ``shape_of(k)`` / ``dtype_of(k)`` come from the file's header and read no tensor data. Arrays are
  not cached: each access reads the tensor again, so converting a model holds one copy, not two.
  """

  def __init__(self, entries: "OrderedDict[str, tuple[tuple[int, ...], np.dtype, Callable[[], np.ndarray]]]",
               source: str):
    self._entries = entries
    self.source = source

  def __getitem__(self, key: str) -> np.ndarray:
    return self._entries[key][2]()

  def __setitem__(self, key: str, value) -> None:
    value = np.asarray(value)
    self._entries[key] = (tuple(value.shape), value.dtype, lambda: value)

  def __delitem__(self, key: str) -> None:
    del self._entries[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def shape_of(self, key: str) -> tuple[int, ...]:
    return self._entries[key][0]

  def dtype_of(self, key: str) -> np.dtype:
    return self._entries[key][1]

  def __repr__(self) -> str:
    return f"StateDict({self.source!r}, {len(self)} tensors)"


def shape_of(state: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
  """The shape of ``state[key]`` without reading it where ``state`` is a :class:`StateDict`."""
  return state.shape_of(key) if isinstance(state, StateDict) else tuple(np.shape(state[key]))


def dtype_of(state: Mapping[str, np.ndarray], key: str) -> np.dtype:
  return state.dtype_of(key) if isinstance(state, StateDict) else np.asarray(state[key]).dtype


def _as_state_dict(obj, path: str) -> StateDict:
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = OrderedDict((k, v) for k, v in obj["state_dict"].items()
                      if not k.startswith(LIGHTNING_DROP_PREFIXES))
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
  entries = OrderedDict()
  for key, value in obj.items():
    if isinstance(value, torch_pickle.LazyTensor):
      entries[str(key)] = (value.shape, value.dtype, value.load)
    elif isinstance(value, np.ndarray):  # a numpy array pickled inside the file (already in memory)
      entries[str(key)] = (value.shape, value.dtype, lambda value=value: value)
    else:
      raise ValueError(f"{path}: entry {str(key)[:80]!r} is a {type(value).__name__}, not a tensor")
  return StateDict(entries, path)


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
                       "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


def _open_safetensors(path: str) -> StateDict:
  # safe_open checks the header against the file (offsets inside it, sizes equal to shape x dtype)
  # and maps the file: tensors are read on access.
  from safetensors import SafetensorError, safe_open

  def read(key: str) -> np.ndarray:
    try:
      with safe_open(path, framework="np") as f:
        return f.get_tensor(key)
    except (SafetensorError, OSError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: cannot read tensor {key[:80]!r} ({e})") from e

  try:
    with safe_open(path, framework="np") as f:
      entries = OrderedDict()
      for key in f.keys():
        view = f.get_slice(key)
        name = view.get_dtype()
        if name not in _SAFETENSORS_DTYPES:
          raise ValueError(f"{path}: tensor {key[:80]!r} has dtype {name}, which numpy cannot hold")
        entries[key] = (tuple(view.get_shape()), np.dtype(_SAFETENSORS_DTYPES[name]),
                        lambda key=key: read(key))
  except SafetensorError as e:
    raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
  return StateDict(entries, path)


# np.savez_compressed shrinks float weights by a few percent; far more is a decompression bomb.
INFLATE_FACTOR = 8
INFLATE_SLACK = 1 << 20


def _open_npz(path: str) -> StateDict:
  """An ``np.savez`` file: each member's ``.npy`` header checked against its declared size first.

  ``np.load`` allocates the array a header declares before reading the member, and inflates
  whatever a member's compressed stream holds; here a member whose header does not match its
  size, or that is not plain numeric data, is refused before anything is allocated or inflated.
  """
  try:
    with zipfile.ZipFile(path) as archive:
      entries = OrderedDict()
      infos = archive.infolist()
      names = [info.filename for info in infos]
      if len(set(names)) != len(names):
        raise ValueError(f"{path}: the archive holds two members of the same name")
      inflated = sum(info.file_size for info in infos if info.compress_type != zipfile.ZIP_STORED)
      if inflated > INFLATE_FACTOR * os.path.getsize(path) + INFLATE_SLACK:
        raise ValueError(f"{path}: its compressed members declare {inflated} bytes, more than "
                         f"{INFLATE_FACTOR}x the file; refused rather than inflated")
      for info in infos:
        if not info.filename.endswith(".npy"):
          raise ValueError(f"{path}: member {info.filename[:80]!r} is not a .npy array")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
          raise ValueError(f"{path}: member {info.filename[:80]!r} uses zip method {info.compress_type}")
        with archive.open(info) as member:
          shape, fortran, dtype, offset = _npy_header(member, info, path)
        entries[info.filename[:-4]] = (shape, dtype, lambda info=info, h=(shape, fortran, dtype, offset):
                                       _read_npy(path, info, *h))
  except ZIP_ERRORS as e:
    raise ValueError(f"{path}: not a readable npz archive ({type(e).__name__}: {e})") from e
  return StateDict(entries, path)


# What zipfile and zlib raise on a damaged archive (a lying offset gives OSError EINVAL on seek).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, struct.error, OverflowError, NotImplementedError,
              KeyError, OSError)


def _npy_header(member, info: zipfile.ZipInfo, path: str):
  fmt = np.lib.format
  name = info.filename[:80]
  try:
    version = fmt.read_magic(member)
    if version == (1, 0):
      shape, fortran, dtype = fmt.read_array_header_1_0(member)
    elif version == (2, 0):
      shape, fortran, dtype = fmt.read_array_header_2_0(member)
    else:
      raise ValueError(f"npy version {version}")
  except Exception as e:  # noqa: BLE001 - numpy parses the header with ast/tokenize: any failure means "invalid"
    raise ValueError(f"{path}: member {name!r} has no valid .npy header ({type(e).__name__}: {e})") from None
  if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
    raise ValueError(f"{path}: member {name!r} holds dtype {dtype}, not plain numbers")
  offset = member.tell()
  want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if info.file_size - offset != want:
    raise ValueError(f"{path}: member {name!r} declares shape {shape} ({dtype}, {want} bytes) but holds "
                     f"{info.file_size - offset} bytes of data")
  return tuple(shape), fortran, dtype, offset


def _read_npy(path: str, info: zipfile.ZipInfo, shape, fortran: bool, dtype: np.dtype, offset: int) -> np.ndarray:
  # zipfile stops a member at its declared size and checks its CRC-32: nothing beyond the size the
  # header was checked against is inflated.
  try:
    with zipfile.ZipFile(path) as archive, archive.open(info.filename) as member:
      member.seek(offset)
      data = member.read(info.file_size - offset)
  except ZIP_ERRORS as e:
    raise ValueError(f"{path}: member {info.filename[:80]!r} is corrupt ({type(e).__name__}: {e})") from e
  array = np.frombuffer(data, dtype=dtype)
  return array.reshape(shape, order="F" if fortran else "C").copy(order="K")


_COPY_CHUNK = 1 << 22


def _read_remote(url: str) -> StateDict:
  """A URL's file (``gs://...``), copied to a local temporary file first, as every reader seeks in or maps
  a local file; the copy is removed with the returned StateDict."""
  source = paths.resolve(url)
  if source.is_dir():
    source = source / "pytorch_model.bin"
    if not source.exists():
      raise FileNotFoundError(f"{url} is a directory without pytorch_model.bin")
  elif not source.exists():
    raise FileNotFoundError(f"checkpoint not found: {url}")
  folder = tempfile.mkdtemp(prefix="maskbit_remote_")
  local = os.path.join(folder, source.name)
  try:
    with source.open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, _COPY_CHUNK)
    state = read_state_dict(local)
  except ValueError as e:  # the readers name the file: the URL, not its temporary copy
    shutil.rmtree(folder, ignore_errors=True)
    raise ValueError(str(e).replace(local, os.fspath(source))) from None
  except BaseException:
    shutil.rmtree(folder, ignore_errors=True)
    raise
  state.source = os.fspath(source)
  weakref.finalize(state, shutil.rmtree, folder, True)
  return state


def read_state_dict(path: str | os.PathLike) -> StateDict:
  """Returns ``{name: array}`` in file order, PyTorch names and layouts, read lazily (:class:`StateDict`).

  ``path`` may be a URL (``gs://...``, any scheme etils.epath serves).
  """
  if paths.is_url(path):
    return _read_remote(os.fspath(path))
  path = _resolve(os.fspath(path))
  lower = path.lower()
  if lower.endswith(".safetensors"):
    return _open_safetensors(path)
  if lower.endswith(".npz"):
    return _open_npz(path)
  if lower.endswith(TORCH_SUFFIXES):
    return _as_state_dict(torch_pickle.open_torch_file(path), path)
  raise ValueError(f"{path}: unknown checkpoint format; expected one of "
                   f"{TORCH_SUFFIXES + ('.safetensors', '_state.npz')} or an Orbax checkpoint directory")


def write_state_dict(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
  """Writes a state dict as ``.bin`` (torch zip format, no torch needed), ``.safetensors`` or ``.npz``.

  The file appears atomically: an existing file is replaced only once the new
  one is complete. A URL (``gs://...``) is written locally first, then uploaded: an object appears whole
  when its upload ends.
  """
  path = os.fspath(path)
  if paths.is_url(path):
    with tempfile.TemporaryDirectory(prefix="maskbit_out_") as folder:
      local = os.path.join(folder, posixpath.basename(path))  # the same name: .bin archives are named after it
      write_state_dict(local, state)
      with open(local, "rb") as src, paths.resolve(path).open("wb") as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
    return
  lower = path.lower()
  if lower.endswith((".bin", ".pt", ".pth")):
    torch_pickle.write_torch_file(path, state)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    if lower.endswith(".safetensors"):
      from safetensors.numpy import save_file

      save_file({k: np.array(v, order="C", copy=None) for k, v in state.items()}, tmp)  # keeps 0-d shapes
    elif lower.endswith(".npz"):
      with open(tmp, "wb") as f:
        np.savez(f, **state)
    else:
      raise ValueError(f"{path}: cannot write this format; use .bin, .safetensors or .npz")
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it owner-only; a converted file is meant to be shared
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
