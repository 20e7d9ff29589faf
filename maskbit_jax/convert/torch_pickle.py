"""Reads and writes PyTorch checkpoint files with numpy only, never running code from them.

Why not ``torch.load``: the port must load the released MaskBit checkpoints on
machines without torch, and a ``.bin``/``.ckpt`` is a pickle, so unpickling it
normally lets the file call any Python function it names. Here every global a
pickle asks for goes through an explicit allowlist (``ALLOWED_GLOBALS``); the
allowed "functions" are our own numpy re-implementations (torch is never
imported), so the worst a hostile file can do is fail to load.

Formats handled by :func:`read_torch_file`:

* zip (torch >= 1.6): ``<folder>/data.pkl`` plus one ``<folder>/data/<key>``
  record per storage and an optional ``<folder>/byteorder`` ("little"/"big").
* legacy (``_use_new_zipfile_serialization=False``): magic-number pickle,
  protocol pickle, sys_info pickle, the main pickle, a pickled list of storage
  keys, then per storage an 8-byte little-endian element count and the raw
  bytes (torch always writes these little-endian, whatever the machine).

What torch 2.x actually writes (checked against torch 2.13): tensors of the
classic dtypes go through ``torch._utils._rebuild_tensor_v2`` with a storage
persistent id naming ``torch.FloatStorage``-style types; the newer dtypes
(uint16/32/64, float8) go through ``_rebuild_tensor_v3`` with a
``torch.storage.UntypedStorage`` (byte) storage and a ``torch.<dtype>`` global.
``torch.storage.TypedStorage`` itself is never written, so it is not allowed.

:func:`write_torch_file` writes the zip format (``_rebuild_tensor_v2`` /
``_v3`` exactly as torch does) so ``torch.load`` with ``weights_only=True``
accepts it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import secrets
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

__all__ = [
    "ALLOWED_GLOBALS",
    "LazyTensor",
    "open_torch_file",
    "TorchDtype",
    "UnsafeCheckpointError",
    "read_torch_file",
    "write_torch_file",
]

PathLike = str | os.PathLike

# torch.serialization constants for the legacy (non-zip) format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_STORAGE_ALIGNMENT = 64  # torch.save aligns storage records to 64 bytes (mmap loading)


class UnsafeCheckpointError(ValueError):
  """A checkpoint named a global outside the allowlist; nothing from it was executed."""

  def __init__(self, path: PathLike, global_name: str):
    self.path = os.fspath(path)
    self.global_name = global_name
    super().__init__(
        f"refusing to load {self.path!r}: the file tried to call the global '{global_name}', "
        "which is not on the allowlist of objects needed to rebuild tensors and state dicts; "
        "it was not executed")


class _FormatError(ValueError):
  """A malformed checkpoint detail; the caller prefixes the file path."""


# ---------------------------------------------------------------------------
# Immutable stand-ins for torch objects.


class _Frozen:
  """Base for stand-ins the pickle can reference but must not mutate.

  A pickle's BUILD opcode sets attributes on whatever object is on its stack;
  the allowlisted stand-ins are module-level singletons, so letting a file
  mutate one would poison every later load in the process.
  """

  __slots__ = ()

  def __setattr__(self, name: str, value: Any) -> None:
    raise AttributeError(f"{type(self).__name__} is read-only")

  def __delattr__(self, name: str) -> None:
    raise AttributeError(f"{type(self).__name__} is read-only")

  def __setstate__(self, state: Any) -> None:
    raise _FormatError(f"the pickle tried to set state on {self!r}")


class TorchDtype(_Frozen):
  """A ``torch.<dtype>`` object found in a checkpoint (e.g. a saved config value)."""

  __slots__ = ("name",)
  name: str

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)

  @property
  def numpy_dtype(self) -> np.dtype:
    if self.name not in _TORCH_DTYPES:
      raise _FormatError(f"torch.{self.name} has no numpy equivalent")
    return _TORCH_DTYPES[self.name]

  def __repr__(self) -> str:
    return f"torch.{self.name}"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, TorchDtype) and other.name == self.name

  def __hash__(self) -> int:
    return hash(("TorchDtype", self.name))


class _StorageType(_Frozen):
  """``torch.FloatStorage`` & co. as named in a storage persistent id."""

  __slots__ = ("name", "dtype")
  name: str
  dtype: np.dtype

  def __init__(self, name: str, dtype: np.dtype):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", dtype)

  def __repr__(self) -> str:
    return self.name


class _Marker(_Frozen):
  """A class global (``torch.Tensor``, ``numpy.ndarray``) used only as an argument."""

  __slots__ = ("name",)
  name: str

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)

  def __repr__(self) -> str:
    return self.name


class _SafeCallable(_Frozen):
  """An allowlisted callable: our own implementation, reachable under a torch/numpy name."""

  __slots__ = ("name", "fn")
  name: str
  fn: Callable[..., Any]

  def __init__(self, name: str, fn: Callable[..., Any]):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "fn", fn)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self.fn(*args, **kwargs)

  def __repr__(self) -> str:
    return self.name


class _StorageRef(_Frozen):
  """A storage from a persistent id: ``numel`` elements of ``dtype`` at ``byte_offset`` in record ``key``."""

  __slots__ = ("key", "dtype", "byte_offset", "numel")
  key: str
  dtype: np.dtype
  byte_offset: int
  numel: int

  def __init__(self, key: str, dtype: np.dtype, byte_offset: int, numel: int):
    object.__setattr__(self, "key", key)
    object.__setattr__(self, "dtype", dtype)
    object.__setattr__(self, "byte_offset", byte_offset)
    object.__setattr__(self, "numel", numel)


class _PendingTensor(_Frozen):
  """A tensor whose bytes are read after unpickling (legacy files store them after the pickle)."""

  __slots__ = ("storage", "offset", "size", "stride", "dtype")
  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]
  dtype: np.dtype

  def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...], dtype: np.dtype):
    for name, value in (("storage", storage), ("offset", offset), ("size", size),
                        ("stride", stride), ("dtype", dtype)):
      object.__setattr__(self, name, value)


# ---------------------------------------------------------------------------
# dtype tables.

_TORCH_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
}

# Legacy storage class name -> torch dtype name (torch.storage._dtype_to_storage_type_map).
_LEGACY_STORAGES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}

# numpy dtype -> torch dtype name, for the writer.
_NUMPY_TO_TORCH: dict[np.dtype, str] = {dt: name for name, dt in _TORCH_DTYPES.items()}
_TORCH_TO_LEGACY_STORAGE: dict[str, str] = {v: k for k, v in _LEGACY_STORAGES.items()}


# ---------------------------------------------------------------------------
# Argument checks shared by the allowlisted callables (the pickle chooses their arguments).


def _check_int(value: Any, what: str, minimum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise _FormatError(f"{what} must be an int, got {type(value).__name__}")
  if minimum is not None and value < minimum:
    raise _FormatError(f"{what} must be >= {minimum}, got {value}")
  return value


def _check_int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)):
    raise _FormatError(f"{what} must be a tuple of ints, got {type(value).__name__}")
  return tuple(_check_int(v, what, minimum=0) for v in value)


def _check_bytes(value: Any, what: str) -> bytes:
  """Python-2 era pickles carry raw bytes as latin-1 str; accept both."""
  if isinstance(value, str):
    return value.encode("latin-1")
  if isinstance(value, (bytes, bytearray)):
    return bytes(value)
  raise _FormatError(f"{what} must be bytes, got {type(value).__name__}")


# ---------------------------------------------------------------------------
# torch rebuild functions, reimplemented.


def _make_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                 dtype: np.dtype | None) -> _PendingTensor:
  if not isinstance(storage, _StorageRef):
    raise _FormatError(f"tensor storage must come from a storage record, got {type(storage).__name__}")
  offset = _check_int(storage_offset, "storage_offset", minimum=0)
  size_t = _check_int_tuple(size, "tensor size")
  stride_t = _check_int_tuple(stride, "tensor stride")
  if len(size_t) != len(stride_t):
    raise _FormatError(f"tensor size {size_t} and stride {stride_t} differ in length")
  _check_no_self_overlap(size_t, stride_t)
  return _PendingTensor(storage, offset, size_t, stride_t, storage.dtype if dtype is None else dtype)


def _check_no_self_overlap(size: tuple[int, ...], stride: tuple[int, ...]) -> None:
  """Refuses views in which two indices share an element (stride 0, ``expand``-ed or overlapping).

  torch.save keeps such views as views, so a few bytes of storage could declare a tensor of any size;
  copying one out would cost its full size. No parameter or buffer of a model is such a view.
  """
  if any(n == 0 for n in size):
    return
  reach = 0  # the largest element offset the smaller-stride dimensions reach
  for s, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):
    if s <= reach:
      raise _FormatError(f"tensor of size {size} with stride {stride} overlaps itself (a stride-0 or "
                         "expanded view); model parameters never do, so it is refused")
    reach += (n - 1) * s


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _PendingTensor:
  """``torch._utils._rebuild_tensor`` (oldest form)."""
  return _make_tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _PendingTensor:
  """``torch._utils._rebuild_tensor_v2``: the tensor's dtype is its storage's."""
  del requires_grad, backward_hooks, metadata  # autograd details; meaningless for numpy
  return _make_tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> _PendingTensor:
  """``torch._utils._rebuild_tensor_v3``: byte storage reinterpreted as ``dtype``."""
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, TorchDtype):
    raise _FormatError(f"_rebuild_tensor_v3 needs a torch dtype, got {type(dtype).__name__}")
  return _make_tensor(storage, storage_offset, size, stride, dtype.numpy_dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
  """``torch._utils._rebuild_parameter``: a Parameter is just its tensor here."""
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                  state: Any) -> Any:
  """``torch._utils._rebuild_parameter_with_state``: Python attributes are dropped."""
  del requires_grad, backward_hooks, state
  return data


_TENSOR_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                      "_rebuild_parameter", "_rebuild_parameter_with_state")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
  """``torch._tensor._rebuild_from_type_v2`` (tensors carrying Python attributes).

  ``func`` is chosen by the file, so it must be one of our tensor rebuilders,
  and the subclass must be plain Tensor/Parameter.
  """
  del state
  if not (isinstance(func, _SafeCallable) and func.name.rsplit(".", 1)[-1] in _TENSOR_REBUILDERS):
    raise _FormatError(f"_rebuild_from_type_v2 with unsupported function {func!r}")
  if not (isinstance(new_type, _Marker) and new_type.name in _TENSOR_TYPES):
    raise _FormatError(f"_rebuild_from_type_v2 with unsupported tensor type {new_type!r}")
  if not isinstance(args, tuple):
    raise _FormatError("_rebuild_from_type_v2 arguments must be a tuple")
  return func(*args)


_TENSOR_TYPES = ("torch.Tensor", "torch.nn.parameter.Parameter")


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
  """``torch.Size``: a tuple of ints."""
  return _check_int_tuple(dims, "torch.Size")


def _torch_device(kind: Any, index: Any = None) -> str:
  """``torch.device``: returned as its string, e.g. "cuda:0"."""
  if not isinstance(kind, str):
    raise _FormatError("torch.device type must be a str")
  return kind if index is None else f"{kind}:{_check_int(index, 'device index', minimum=0)}"


# ---------------------------------------------------------------------------
# builtins / codecs, narrowed to the argument types a state dict needs.

_TEXT_ENCODINGS = {"latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"}


def _codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
  """``_codecs.encode``: how protocol-2 pickles spell bytes. Only plain text codecs."""
  if not isinstance(obj, str) or not isinstance(encoding, str) or encoding.lower() not in _TEXT_ENCODINGS:
    raise _FormatError("_codecs.encode is only allowed on str with a latin-1/utf-8/ascii codec")
  if errors != "strict":
    raise _FormatError("_codecs.encode is only allowed with errors='strict'")
  return obj.encode(encoding)


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
  """``builtins.bytearray``, but never from an int (a size: a memory bomb)."""
  if isinstance(source, str):
    return bytearray(_codecs_encode(source, "latin-1" if encoding is None else encoding))
  return bytearray(_check_bytes(source, "bytearray source"))


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
  if not all(isinstance(v, (int, float)) for v in (real, imag)):
    raise _FormatError("complex() takes numbers only here")
  return complex(real, imag)


def _slice(*args: Any) -> slice:
  if not 1 <= len(args) <= 3 or not all(a is None or isinstance(a, int) for a in args):
    raise _FormatError("slice() takes up to three ints or None here")
  return slice(*args)


def _set(items: Iterable[Any] = ()) -> set[Any]:
  return set(_check_container(items, "set"))


def _frozenset(items: Iterable[Any] = ()) -> frozenset[Any]:
  return frozenset(_check_container(items, "frozenset"))


def _ordered_dict(items: Any = ()) -> collections.OrderedDict[Any, Any]:
  return collections.OrderedDict(_check_container(items, "OrderedDict"))


def _check_container(items: Any, what: str) -> Any:
  if not isinstance(items, (list, tuple, dict, set, frozenset)):
    raise _FormatError(f"{what}() takes a list/tuple/dict here, got {type(items).__name__}")
  return items


# ---------------------------------------------------------------------------
# numpy scalars and arrays (as pickled inside e.g. Lightning checkpoints).

_NUMPY_DTYPE_SPEC = re.compile(r"[?biufc]\d{0,2}")


class _PendingDtype:
  """``numpy.dtype(spec, align, copy)`` plus its BUILD state, restricted to plain numbers.

  A real ``np.dtype`` is not handed to the pickle because BUILD would then call
  ``np.dtype.__setstate__`` on it, which can alter a shared builtin dtype.
  """

  __slots__ = ("base", "byteorder", "built")

  def __init__(self, spec: Any, align: Any = False, copy: Any = False):
    del align, copy
    if not isinstance(spec, str) or not _NUMPY_DTYPE_SPEC.fullmatch(spec):
      raise _FormatError(f"numpy dtype {spec!r} is not a plain bool/int/float/complex type")
    self.base = np.dtype(spec)
    self.byteorder = "="
    self.built = False

  def __setstate__(self, state: Any) -> None:
    if self.built or not isinstance(state, tuple) or len(state) < 8:
      raise _FormatError("bad numpy dtype state")
    _, byteorder, subarray, names, fields = state[:5]
    if byteorder not in ("<", ">", "|", "=") or subarray is not None or names is not None or fields is not None:
      raise _FormatError("numpy dtype state describes a structured or unknown dtype")
    self.byteorder = byteorder
    self.built = True

  def result(self) -> np.dtype:
    return self.base.newbyteorder(self.byteorder) if self.byteorder in "<>" else self.base


class _PendingNdarray:
  """``numpy.core.multiarray._reconstruct(ndarray, ...)`` then BUILD, for plain numeric arrays."""

  __slots__ = ("array",)

  def __init__(self) -> None:
    self.array: np.ndarray | None = None

  def __setstate__(self, state: Any) -> None:
    if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
      raise _FormatError("bad numpy array state")
    shape, dtype, is_fortran, raw = state[-4:]
    shape = _check_int_tuple(shape, "numpy array shape")
    if not isinstance(dtype, _PendingDtype):
      raise _FormatError("numpy array dtype must be a plain numpy dtype")
    dt = dtype.result()
    raw = _check_bytes(raw, "numpy array data")
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
      raise _FormatError(f"numpy array data has {len(raw)} bytes, shape {shape} needs a different size")
    order = "F" if is_fortran else "C"
    self.array = np.frombuffer(raw, dtype=dt).reshape(shape, order=order).copy(order=order)

  def result(self) -> np.ndarray:
    if self.array is None:
      raise _FormatError("numpy array without data (missing BUILD)")
    return self.array


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
  """``numpy.core.multiarray.scalar``: one element of a plain dtype from its bytes."""
  if not isinstance(dtype, _PendingDtype):
    raise _FormatError("numpy scalar dtype must be a plain numpy dtype")
  dt = dtype.result()
  raw = _check_bytes(data, "numpy scalar data")
  if len(raw) != dt.itemsize:
    raise _FormatError(f"numpy scalar of {dt} needs {dt.itemsize} bytes, got {len(raw)}")
  return np.frombuffer(raw, dtype=dt)[0]


def _numpy_reconstruct(subtype: Any, shape: Any = (0,), dtype_code: Any = b"b") -> _PendingNdarray:
  del shape, dtype_code  # replaced by the BUILD state, as numpy itself does
  if not (isinstance(subtype, _Marker) and subtype.name == "numpy.ndarray"):
    raise _FormatError(f"numpy _reconstruct of unsupported type {subtype!r}")
  return _PendingNdarray()


# ---------------------------------------------------------------------------
# The allowlist.


def _build_allowlist() -> dict[str, Any]:
  allowed: dict[str, Any] = {}

  def fn(name: str, impl: Callable[..., Any]) -> None:
    allowed[name] = _SafeCallable(name, impl)

  fn("collections.OrderedDict", _ordered_dict)
  for impl in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
               _rebuild_parameter_with_state):
    fn(f"torch._utils.{impl.__name__}", impl)
  fn("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2)
  for name in _TENSOR_TYPES:
    allowed[name] = _Marker(name)
  for storage, dtype_name in _LEGACY_STORAGES.items():
    allowed[f"torch.{storage}"] = _StorageType(f"torch.{storage}", _TORCH_DTYPES[dtype_name])
  for name in ("torch.storage.UntypedStorage", "torch.UntypedStorage"):
    allowed[name] = _StorageType(name, np.dtype(np.uint8))
  for dtype_name in _TORCH_DTYPES:
    allowed[f"torch.{dtype_name}"] = TorchDtype(dtype_name)
  fn("torch.Size", _torch_size)
  fn("torch.device", _torch_device)
  fn("_codecs.encode", _codecs_encode)
  fn("builtins.set", _set)
  fn("builtins.frozenset", _frozenset)
  fn("builtins.slice", _slice)
  fn("builtins.complex", _complex)
  fn("builtins.bytearray", _bytearray)
  for core in ("numpy.core", "numpy._core"):
    fn(f"{core}.multiarray.scalar", _numpy_scalar)
    fn(f"{core}.multiarray._reconstruct", _numpy_reconstruct)
  fn("numpy.dtype", _PendingDtype)
  allowed["numpy.ndarray"] = _Marker("numpy.ndarray")
  return allowed


_ALLOWED: dict[str, Any] = _build_allowlist()
ALLOWED_GLOBALS: frozenset[str] = frozenset(_ALLOWED)

# Python-2 module names that protocol-2 pickles use (pickle's fix_imports, done by hand
# because find_class below sees the raw names).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves globals only from ``_ALLOWED`` and storages into ``_StorageRef``."""

  def __init__(self, file: BinaryIO, path: PathLike, storages: _StorageTable | None):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._storages = storages

  def find_class(self, module: str, name: str) -> Any:
    full = f"{_PY2_MODULES.get(module, module)}.{name}"
    try:
      return _ALLOWED[full]
    except KeyError:
      raise UnsafeCheckpointError(self._path, f"{module}.{name}") from None

  def persistent_load(self, pid: Any) -> Any:
    if self._storages is None:
      raise _FormatError("unexpected persistent id outside the main pickle")
    return self._storages.resolve(pid)


def _unpickle(file: BinaryIO, path: PathLike, what: str,
              storages: _StorageTable | None = None) -> Any:
  """One restricted ``Unpickler(...).load()`` with every failure turned into a ValueError."""
  try:
    start = file.tell()
    _scan_pickle(file)
    file.seek(start)
    return _RestrictedUnpickler(file, path, storages).load()
  except UnsafeCheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - any parse failure (incl. RecursionError) means "bad file"
    raise ValueError(f"{os.fspath(path)!r}: could not unpickle {what}: {_describe(e)}") from e


_MEMO_PUTS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))


def _scan_pickle(file: BinaryIO) -> None:
  """Walks the pickle's opcodes without running any, refusing what would allocate beyond its size.

  The C unpickler keeps its memo as an array sized by the largest index a PUT names: four bytes
  (``LONG_BINPUT 0xffffffff``) would make it allocate and clear 32 GB. Pickles torch writes number
  their memo entries 0, 1, 2, ..., so an index beyond the number of opcodes is refused. (Every
  length argument is read here from the pickle's own bytes, so one that overstates them fails too.)
  """
  count = 0
  for opcode, arg, _ in pickletools.genops(file):
    count += 1
    if opcode.name in _MEMO_PUTS and not (isinstance(arg, int) and 0 <= arg <= count):
      raise _FormatError(f"the pickle names memo entry {arg!r:.40} after {count} opcodes; not a torch pickle")


# ---------------------------------------------------------------------------
# Storages.


class _StorageTable:
  """The storages a pickle references, keyed as in the file."""

  def __init__(self) -> None:
    self.roots: dict[str, tuple[np.dtype, int]] = {}
    self._refs: dict[tuple[str, str], _StorageRef] = {}

  def resolve(self, pid: Any) -> _StorageRef:
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
      raise _FormatError(f"unsupported persistent id {pid!r:.200}")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename != "storage":
      raise _FormatError(f"unsupported persistent id kind {typename!r} (only tensor storages are read)")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
      raise _FormatError(f"persistent id names {storage_type!r}, not a storage type")
    key = key.decode("ascii") if isinstance(key, bytes) else key
    if not isinstance(key, str):
      raise _FormatError("storage key must be a str")
    root = self._root(key, storage_type.dtype, _check_int(numel, "storage numel", minimum=0))
    if view is None:
      return root
    return self._view(root, view)

  def _root(self, key: str, dtype: np.dtype, numel: int) -> _StorageRef:
    if key in self.roots and self.roots[key] != (dtype, numel):
      raise _FormatError(f"storage {key!r} is referenced with two different types or sizes")
    self.roots[key] = (dtype, numel)
    return self._refs.setdefault(("", key), _StorageRef(key, dtype, 0, numel))

  def _view(self, root: _StorageRef, view: Any) -> _StorageRef:
    """Legacy storage views: ``(view_key, offset, numel)`` into a root storage."""
    if not isinstance(view, tuple) or len(view) != 3:
      raise _FormatError(f"bad storage view metadata {view!r:.200}")
    view_key, offset, numel = view
    offset = _check_int(offset, "storage view offset", minimum=0)
    numel = _check_int(numel, "storage view numel", minimum=0)
    if offset + numel > root.numel:
      raise _FormatError(f"storage view {view_key!r} runs past its root storage {root.key!r}")
    ref = _StorageRef(root.key, root.dtype, offset * root.dtype.itemsize, numel)
    return self._refs.setdefault((str(view_key), root.key), ref)


def _byteswap(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """Swaps bytes per scalar component (complex numbers swap each half), any dtype incl. bfloat16."""
  unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
  if unit <= 1:
    return raw
  return raw.reshape(-1, unit)[:, ::-1].reshape(-1).copy()


class LazyTensor:
  """A tensor of a checkpoint file: shape and dtype known, bytes read only by :meth:`load`.

  Lets a caller compare every declared shape with the model before a byte of tensor data is read,
  so a file that cannot match costs no more than its pickle.
  """

  __slots__ = ("shape", "dtype", "_pending", "_records")

  def __init__(self, pending: _PendingTensor, records: "_Records"):
    self.shape = pending.size
    self.dtype = pending.dtype
    self._pending = pending
    self._records = records

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

  def load(self) -> np.ndarray:
    """The tensor as a C-contiguous array that owns its memory."""
    return self._records.tensor(self._pending, self.nbytes)

  def __repr__(self) -> str:
    return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


class _Records:
  """The storage records of one file, read on demand, with a bound on the bytes tensors may take.

  The bound (``MATERIALIZE_FACTOR`` x the file's size, plus ``MATERIALIZE_SLACK``) allows tensors
  sharing a storage (tied weights) but not a small file whose pickle names one storage in thousands
  of tensors.
  """

  def __init__(self, path: PathLike, file_size: int, big_endian: bool):
    self.path = os.fspath(path)
    self.big_endian = big_endian
    self.budget = MATERIALIZE_FACTOR * file_size + MATERIALIZE_SLACK
    self.used = 0

  def raw(self, key: str) -> np.ndarray:
    raise NotImplementedError

  def tensor(self, pending: _PendingTensor, nbytes: int) -> np.ndarray:
    if self.used + nbytes > self.budget:
      raise ValueError(f"{self.path!r}: its tensors would take more than {self.budget} bytes, "
                       f"{MATERIALIZE_FACTOR}x the file; a state dict never shares storages that much")
    self.used += nbytes
    try:
      return _tensor_from_record(self.raw(pending.storage.key), pending, self.big_endian)
    except _FormatError as e:
      raise ValueError(f"{self.path!r}: {e}") from e


class _ZipRecords(_Records):
  """Stored zip entries, each read from its offset and checked against its CRC-32."""

  def __init__(self, path: PathLike, file_size: int, big_endian: bool,
               entries: Mapping[str, tuple[str, int, int, int]]):
    super().__init__(path, file_size, big_endian)
    self.entries = entries  # key -> (entry name, data offset, size, crc32)

  def raw(self, key: str) -> np.ndarray:
    name, start, size, crc = self.entries[key]
    with open(self.path, "rb") as f:
      f.seek(start)
      data = f.read(size)
    if len(data) != size:
      raise _FormatError(f"the file ends inside record {name!r} (truncated since it was opened)")
    if zlib.crc32(data) != crc:
      raise _FormatError(f"record {name!r} fails its CRC-32 check: its bytes are corrupt")
    return np.frombuffer(data, dtype=np.uint8)


class _MemoryRecords(_Records):
  """Legacy files: storages are slices of the file's bytes, already in memory."""

  def __init__(self, path: PathLike, file_size: int, records: Mapping[str, memoryview]):
    super().__init__(path, file_size, big_endian=False)
    self.records = records

  def raw(self, key: str) -> np.ndarray:
    return np.frombuffer(self.records[key], dtype=np.uint8)


# Tensors may take at most this many times the file's bytes (tied weights share storages), plus a slack.
MATERIALIZE_FACTOR = 4
MATERIALIZE_SLACK = 1 << 20


def _tensor_from_record(record: np.ndarray, tensor: _PendingTensor, big_endian: bool) -> np.ndarray:
  """Copies one (possibly strided, offset) tensor out of its storage's raw bytes."""
  storage, dtype = tensor.storage, tensor.dtype
  if any(n == 0 for n in tensor.size):
    return np.zeros(tensor.size, dtype=dtype)
  itemsize = dtype.itemsize
  available = storage.numel * storage.dtype.itemsize  # bytes in this storage
  extent = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride)) + 1
  if extent * itemsize > available:
    raise _FormatError(
        f"tensor of size {tensor.size}, stride {tensor.stride}, offset {tensor.offset} ({dtype}) "
        f"needs {extent * itemsize} bytes but storage {storage.key!r} has {available}")
  start = storage.byte_offset + tensor.offset * itemsize
  flat = record[start:start + (extent - tensor.offset) * itemsize]
  if big_endian:
    flat = _byteswap(flat, dtype)
  # np.ndarray over the buffer (not as_strided, which loses ml_dtypes types); numpy bounds-checks it.
  strided = np.ndarray(tensor.size, dtype=dtype, buffer=np.ascontiguousarray(flat),
                       strides=tuple(s * itemsize for s in tensor.stride))
  return np.array(strided, dtype=dtype, copy=True, order="C")


class _Resolver:
  """Replaces the placeholders left by unpickling with numpy objects, in place where possible.

  Containers are updated in place (keeping OrderedDict order and attributes such
  as a state dict's ``_metadata``); each placeholder becomes one object, so a
  tensor referenced twice stays one array.
  """

  def __init__(self, records: _Records, materialize: bool):
    self._records = records
    self._materialize = materialize  # arrays (read now) or LazyTensors (read on demand)
    self._memo: dict[int, Any] = {}

  def __call__(self, obj: Any) -> Any:
    if isinstance(obj, (str, bytes, int, float, complex, type(None), np.generic, np.ndarray, TorchDtype)):
      return obj
    if id(obj) in self._memo:
      return self._memo[id(obj)]
    return self._resolve_new(obj)

  def _resolve_new(self, obj: Any) -> Any:
    if isinstance(obj, (_PendingTensor, _StorageRef)):
      pending = obj if isinstance(obj, _PendingTensor) else _PendingTensor(obj, 0, (obj.numel,), (1,), obj.dtype)
      tensor = LazyTensor(pending, self._records)
      return self._remember(obj, tensor.load() if self._materialize else tensor)
    if isinstance(obj, (_PendingNdarray, _PendingDtype)):
      return self._remember(obj, obj.result())
    if isinstance(obj, dict):
      self._remember(obj, obj)
      for key, value in list(obj.items()):
        self._check_hashable_plain(key)
        obj[key] = self(value)
      if hasattr(obj, "__dict__"):
        self(vars(obj))
      return obj
    if isinstance(obj, list):
      self._remember(obj, obj)
      obj[:] = [self(v) for v in obj]
      return obj
    if isinstance(obj, tuple):
      items = tuple(self(v) for v in obj)
      return self._remember(obj, obj if all(a is b for a, b in zip(items, obj)) else items)
    if isinstance(obj, (set, frozenset)):
      for item in obj:
        self._check_hashable_plain(item)
      return obj
    if isinstance(obj, (bytearray, slice, _Frozen)):
      if isinstance(obj, (_SafeCallable, _StorageType, _Marker)):
        raise _FormatError(f"the checkpoint contains the bare object {obj!r}, not data")
      return obj
    raise _FormatError(f"unexpected object of type {type(obj).__name__} in the checkpoint")

  def _check_hashable_plain(self, item: Any) -> None:
    if isinstance(item, (_PendingTensor, _StorageRef, _PendingNdarray, _PendingDtype)):
      raise _FormatError("a tensor or array is used as a dict key or set element")

  def _remember(self, obj: Any, value: Any) -> Any:
    self._memo[id(obj)] = value
    return value


# ---------------------------------------------------------------------------
# Reading.


def read_torch_file(path: PathLike) -> Any:
  """Loads a ``torch.save`` file with numpy arrays in place of tensors; no code from it runs.

  Args:
    path: a zip-format (torch >= 1.6) or legacy-format checkpoint.

  Returns:
    The saved object (usually an OrderedDict state dict, or a dict for Lightning
    ``.ckpt`` files) with each tensor/Parameter as a C-contiguous numpy array that
    owns its memory (bfloat16/float8 via ml_dtypes), torch dtypes as
    :class:`TorchDtype`, ``torch.Size`` as tuple and ``torch.device`` as str.

  Raises:
    UnsafeCheckpointError: the file names a global outside ``ALLOWED_GLOBALS``.
    ValueError: the file is not a torch checkpoint, is truncated, corrupt or malformed, or its
      tensors would take more than ``MATERIALIZE_FACTOR`` times its size.
  """
  return _open(path, materialize=True)


def open_torch_file(path: PathLike) -> Any:
  """Like :func:`read_torch_file`, with each tensor a :class:`LazyTensor` (shape and dtype, no bytes read).

  What is read before any tensor is bounded by the file: every zip record must be stored (torch
  never compresses them, so nothing is inflated) and lie inside the file, every declared size must
  fit the bytes present, and the pickle is scanned before it runs so that no opcode can make the
  unpickler allocate beyond a small multiple of the pickle's own size.
  """
  return _open(path, materialize=False)


def _open(path: PathLike, *, materialize: bool) -> Any:
  path = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(512)
    f.seek(0)
    if head.startswith(_ZIP_MAGIC):
      return _with_path(path, lambda: _open_zip(path, f, materialize))
    if head[:1] == b"\x80":
      return _with_path(path, lambda: _open_legacy(path, f, materialize))
  if len(head) >= 262 and head[257:262] == b"ustar":
    raise ValueError(f"{path!r}: the pre-1.0 torch tar checkpoint format is not supported")
  raise ValueError(f"{path!r}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")


def _describe(e: BaseException) -> str:
  """An exception as text; some (zipfile's on a lying directory) carry no message at all."""
  text = str(e)
  return text if text and text != "None" else type(e).__name__


def _with_path(path: PathLike, fn: Callable[[], Any]) -> Any:
  """Runs ``fn`` turning format errors into ValueErrors that name the file."""
  try:
    return fn()
  except UnsafeCheckpointError:
    raise
  except ValueError as e:
    if str(e).startswith(repr(os.fspath(path))):
      raise
    raise ValueError(f"{os.fspath(path)!r}: {_describe(e)}") from e
  except (zipfile.BadZipFile, zlib.error, EOFError, struct.error, OverflowError, KeyError, IndexError,
          UnicodeDecodeError, NotImplementedError, RecursionError, OSError) as e:
    if isinstance(e, OSError) and e.filename is not None:  # a real I/O error on a named file: as it is
      raise
    raise ValueError(f"{os.fspath(path)!r}: not a readable torch checkpoint ({type(e).__name__}: "
                     f"{_describe(e)})") from e
  except MemoryError as e:
    raise ValueError(f"{os.fspath(path)!r}: declares more data than can be held in memory; not a "
                     "torch checkpoint this library can read") from e


def _file_size(f: BinaryIO) -> int:
  f.seek(0, io.SEEK_END)
  size = f.tell()
  f.seek(0)
  return size


def _open_zip(path: PathLike, f: BinaryIO, materialize: bool) -> Any:
  size = _file_size(f)
  try:
    archive = zipfile.ZipFile(f)
  except (zipfile.BadZipFile, ValueError, struct.error, OverflowError) as e:
    raise _FormatError(f"not a readable zip archive, probably truncated or corrupt ({_describe(e)})") from e
  with archive:
    prefix = _zip_prefix(archive)
    locations = {}
    for info in archive.infolist():
      if info.filename in locations:
        raise _FormatError(f"the archive holds two records named {info.filename[:80]!r}")
      locations[info.filename] = _stored_location(f, info, size)
    big_endian = _zip_byteorder(archive, prefix) == "big"
    pickle_bytes = archive.read(prefix + "data.pkl")  # stored and CRC-checked: at most the file's size
    storages = _StorageTable()
    obj = _unpickle(io.BytesIO(pickle_bytes), path, "data.pkl", storages)
    entries = {}
    for key, (dtype, numel) in storages.roots.items():
      name = f"{prefix}data/{key}"
      if name not in locations:
        raise _FormatError(f"the storage record {name!r} is missing from the archive")
      start, record_size, crc = locations[name]
      _check_record_size(record_size, name, dtype, numel)
      entries[key] = (name, start, record_size, crc)
    return _resolve(obj, _ZipRecords(path, size, big_endian, entries), materialize)


def _stored_location(f: BinaryIO, info: zipfile.ZipInfo, file_size: int) -> tuple[int, int, int]:
  """(data offset, size, CRC-32) of an entry, checked to be stored and to lie inside the file."""
  if info.compress_type != zipfile.ZIP_STORED:
    raise _FormatError(f"record {info.filename!r} is compressed (zip method {info.compress_type}); torch "
                       "stores every record uncompressed, so it is refused rather than inflated")
  if info.file_size != info.compress_size:
    raise _FormatError(f"record {info.filename!r} is stored but declares {info.file_size} bytes "
                       f"uncompressed and {info.compress_size} in the file")
  if info.header_offset < 0 or info.header_offset + 30 > file_size:
    raise _FormatError(f"record {info.filename!r} starts past the end of the file")
  f.seek(info.header_offset)
  header = f.read(30)
  if len(header) != 30 or header[:4] != _ZIP_MAGIC:
    raise _FormatError(f"record {info.filename!r} has no local header where the directory says")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  if f.read(name_len) != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"):
    raise _FormatError(f"record {info.filename[:80]!r}: the directory and the local header name "
                       "different records")
  start = info.header_offset + 30 + name_len + extra_len
  if start + info.file_size > file_size:
    raise _FormatError(f"record {info.filename!r} declares {info.file_size} bytes at offset {start}, "
                       f"past the end of the {file_size}-byte file")
  return start, info.file_size, info.CRC


def _zip_prefix(archive: zipfile.ZipFile) -> str:
  """The archive's single top-level folder (torch names it after the file; any name is fine)."""
  names = archive.namelist()
  if not names:
    raise _FormatError("the zip archive is empty")
  first = names[0].split("/", 1)[0] + "/"
  if first + "data.pkl" in names:
    return first
  candidates = [n[:-len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(candidates) != 1:
    raise _FormatError("the zip archive has no <folder>/data.pkl record; not a torch.save file")
  return candidates[0]


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
  """Files without a byteorder record are little-endian, as torch assumes by default."""
  try:
    order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
  except KeyError:
    return "little"
  if order not in ("little", "big"):
    raise _FormatError(f"unknown byteorder record {order[:40]!r}")
  return order


def _check_record_size(size: int, name: str, dtype: np.dtype, numel: int) -> None:
  if size < numel * dtype.itemsize:
    raise _FormatError(
        f"storage record {name!r} has {size} bytes, expected {numel * dtype.itemsize} "
        f"({numel} x {dtype})")


def _resolve(obj: Any, records: _Records, materialize: bool) -> Any:
  try:
    return _Resolver(records, materialize)(obj)
  except RecursionError as e:
    raise _FormatError("the checkpoint is nested too deeply") from e


def _open_legacy(path: PathLike, f: BinaryIO, materialize: bool) -> Any:
  # Legacy files are read whole (they are small and old): every length below is then checked
  # against the bytes present instead of being handed to a file read that would allocate it.
  data = f.read()
  stream = io.BytesIO(data)
  magic = _unpickle(stream, path, "the magic number")
  if magic != _LEGACY_MAGIC:
    raise _FormatError("a pickle, but not a torch.save file (wrong magic number)")
  protocol = _unpickle(stream, path, "the protocol version")
  if protocol != _LEGACY_PROTOCOL:
    raise _FormatError(f"unsupported legacy protocol version {protocol!r:.40}")
  _unpickle(stream, path, "sys_info")  # endianness here is moot: storages are always little-endian
  storages = _StorageTable()
  obj = _unpickle(stream, path, "the main pickle", storages)
  keys = _unpickle(stream, path, "the storage key list")
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise _FormatError("the storage key list is not a list of str")
  records = _legacy_storages(memoryview(data), stream.tell(), keys, storages)
  return _resolve(obj, _MemoryRecords(path, len(data), records), materialize)


def _legacy_storages(data: memoryview, pos: int, keys: list[str], storages: _StorageTable
                     ) -> dict[str, memoryview]:
  """Each storage: int64 little-endian element count, then that many elements' bytes."""
  records: dict[str, memoryview] = {}
  for key in keys:
    if key not in storages.roots:
      raise _FormatError(f"storage {key!r:.80} is listed but never referenced, its type is unknown")
    if key in records:
      raise _FormatError(f"storage {key!r:.80} is listed twice")
    dtype, numel = storages.roots[key]
    if pos + 8 > len(data):
      raise _FormatError(f"the file ends before storage {key!r:.80} (truncated)")
    count = struct.unpack("<q", data[pos:pos + 8])[0]
    pos += 8
    nbytes = count * dtype.itemsize
    if count < 0 or pos + nbytes > len(data):
      raise _FormatError(f"storage {key!r:.80} declares {count} elements, more than the file holds (truncated?)")
    _check_record_size(nbytes, key, dtype, numel)
    records[key] = data[pos:pos + nbytes]
    pos += nbytes
  missing = sorted(set(storages.roots) - set(records))
  if missing:
    raise _FormatError(f"storage records {missing[:8]} are missing from the file")
  return records


# ---------------------------------------------------------------------------
# Writing.


class _PickleWriter:
  """Emits the small protocol-2 opcode subset torch's weights_only loader accepts.

  Written by hand because pickling through ``pickle.Pickler`` would need the
  real ``torch._utils`` functions to exist for their GLOBAL opcodes.
  """

  def __init__(self) -> None:
    self.out = bytearray(b"\x80\x02")  # PROTO 2

  def global_(self, module: str, name: str) -> None:
    self.out += b"c" + f"{module}\n{name}\n".encode("ascii")

  def str_(self, value: str) -> None:
    data = value.encode("utf-8")
    self.out += b"X" + struct.pack("<I", len(data)) + data

  def int_(self, value: int) -> None:
    if 0 <= value < 1 << 8:
      self.out += b"K" + struct.pack("<B", value)
    elif 0 <= value < 1 << 16:
      self.out += b"M" + struct.pack("<H", value)
    elif -(1 << 31) <= value < 1 << 31:
      self.out += b"J" + struct.pack("<i", value)
    else:
      data = pickle.encode_long(value)
      self.out += b"\x8a" + struct.pack("<B", len(data)) + data  # LONG1

  def false(self) -> None:
    self.out += b"\x89"

  def int_tuple(self, values: tuple[int, ...]) -> None:
    self.mark()
    for v in values:
      self.int_(v)
    self.tuple_()

  def mark(self) -> None:
    self.out += b"("

  def tuple_(self) -> None:
    self.out += b"t"

  def call_no_args(self) -> None:
    self.out += b")R"  # EMPTY_TUPLE, REDUCE

  def reduce(self) -> None:
    self.out += b"R"

  def persid(self) -> None:
    self.out += b"Q"

  def setitems(self) -> None:
    self.out += b"u"

  def stop(self) -> bytes:
    self.out += b"."
    return bytes(self.out)


def _prepare_array(name: Any, value: Any) -> tuple[np.ndarray, tuple[int, ...], str]:
  """``value``'s little-endian C-order bytes (uint8, 1-D), its shape and its torch dtype name."""
  if not isinstance(name, str):
    raise TypeError(f"state dict keys must be str, got {type(name).__name__}")
  arr = np.asarray(value)
  native = arr.dtype.newbyteorder("=") if arr.dtype.byteorder in "<>" else arr.dtype
  torch_name = _NUMPY_TO_TORCH.get(native)
  if torch_name is None:
    raise TypeError(f"{name!r}: dtype {arr.dtype} has no torch equivalent")
  arr = np.asarray(arr, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
  stored_big = arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big")
  raw = arr.reshape(-1).view(np.uint8)
  if stored_big:
    raw = _byteswap(raw, native)
  return raw.reshape(-1), arr.shape, torch_name


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
  strides, step = [], 1
  for n in reversed(shape):
    strides.append(step)
    step *= max(n, 1)
  return tuple(reversed(strides))


def _emit_tensor(w: _PickleWriter, key: str, shape: tuple[int, ...], torch_name: str, nbytes: int) -> None:
  """Writes one tensor exactly as torch.save does: v2 with a typed storage, v3 for new dtypes."""
  itemsize = _TORCH_DTYPES[torch_name].itemsize
  legacy_storage = _TORCH_TO_LEGACY_STORAGE.get(torch_name)
  w.global_("torch._utils", "_rebuild_tensor_v2" if legacy_storage else "_rebuild_tensor_v3")
  w.mark()
  w.mark()
  w.str_("storage")
  if legacy_storage:
    w.global_("torch", legacy_storage)
  else:
    w.global_("torch.storage", "UntypedStorage")
  w.str_(key)
  w.str_("cpu")
  w.int_(nbytes // itemsize if legacy_storage else nbytes)
  w.tuple_()
  w.persid()
  w.int_(0)
  w.int_tuple(shape)
  w.int_tuple(_contiguous_strides(shape))
  w.false()
  w.global_("collections", "OrderedDict")
  w.call_no_args()
  if not legacy_storage:
    w.global_("torch", torch_name)
  w.tuple_()
  w.reduce()


def _state_dict_pickle(entries: list[tuple[str, tuple[int, ...], str, int]]) -> bytes:
  w = _PickleWriter()
  w.global_("collections", "OrderedDict")
  w.call_no_args()
  w.mark()
  for index, (name, shape, torch_name, nbytes) in enumerate(entries):
    w.str_(name)
    _emit_tensor(w, str(index), shape, torch_name, nbytes)
  w.setitems()
  return w.stop()


def _zip_info(name: str, file_size: int, position: int, align: int) -> zipfile.ZipInfo:
  """A stored entry whose data starts on an ``align`` boundary (padding in the extra field, as torch does)."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  info.file_size = file_size
  if align > 1:
    zip64_extra = 20 if file_size * 1.05 > zipfile.ZIP64_LIMIT else 0
    header = 30 + len(name.encode("utf-8")) + zip64_extra
    pad = (-(position + header + 4)) % align
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding record
  return info


def _write_zip(f: BinaryIO, archive_name: str, arrays: list[tuple[str, np.ndarray, tuple[int, ...], str]]) -> None:
  """Writes the torch zip layout: data.pkl, metadata records, data/<i>, version."""
  entries = [(name, shape, torch_name, raw.nbytes) for name, raw, shape, torch_name in arrays]
  with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
    def put(name: str, data: bytes | memoryview, align: int = 1) -> None:
      info = _zip_info(f"{archive_name}/{name}", len(data), f.tell(), align)
      with archive.open(info, "w") as out:
        out.write(data)

    put("data.pkl", _state_dict_pickle(entries))
    put(".format_version", b"1")
    put(".storage_alignment", str(_STORAGE_ALIGNMENT).encode())
    put("byteorder", b"little")
    for index, (_, raw, _, _) in enumerate(arrays):
      put(f"data/{index}", memoryview(raw), align=_STORAGE_ALIGNMENT)
    put("version", b"3\n")


def _archive_name(path: PathLike) -> str:
  """torch names the top folder after the file; keep to safe characters."""
  stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip(".")
  return stem or "archive"


def write_torch_file(path: PathLike, state_dict: Mapping[str, Any]) -> None:
  """Writes ``state_dict`` as a zip-format checkpoint that ``torch.load`` accepts with ``weights_only=True``.

  The result is an OrderedDict of contiguous CPU tensors in the mapping's key
  order. The file appears atomically: it is written to a temporary file in the
  same folder and renamed over ``path``, so a crash or error never leaves a
  half-written checkpoint (an existing one stays intact).

  Args:
    path: destination file.
    state_dict: str -> array-like (numpy, jax, scalars); dtypes float16/32/64,
      bfloat16, float8 (ml_dtypes), int8..int64, uint8..uint64, bool, complex64/128.

  Raises:
    TypeError: a key is not a str or a dtype has no torch equivalent.
  """
  arrays = []
  for name, value in state_dict.items():
    raw, shape, torch_name = _prepare_array(name, value)
    arrays.append((name, raw, shape, torch_name))
  directory = os.path.dirname(os.path.abspath(os.fspath(path)))
  tmp = os.path.join(directory, f".{os.path.basename(os.fspath(path))}.{secrets.token_hex(6)}.tmp")
  # os.open applies the umask, so the final file gets normal permissions (unlike mkstemp's 0600).
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      _write_zip(f, _archive_name(path), arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
