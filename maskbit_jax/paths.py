"""Paths the program reads and writes: local files, or URLs (``gs://``, ``s3://``, ...) through etils.epath.

A local path is made absolute, as before; a URL is kept as it is (``os.path.abspath`` would turn
``gs://b/run`` into ``<cwd>/gs:/b/run``, and so does ``epath.Path.absolute``). Which client epath uses
for ``gs://`` is its own choice: TensorFlow's GCS file system when TensorFlow is installed, gcsfs
(fsspec) with ``EPATH_USE_TF=false``; only gcsfs honours ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

PathLike = str | os.PathLike
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: PathLike) -> bool:
  """Whether ``path`` names an object store or another scheme (``gs://...``), not a local file."""
  return bool(_SCHEME.match(os.fspath(path)))


def resolve(path: PathLike) -> epath.Path:
  """``path`` as an epath: a local one absolute, a URL unchanged."""
  text = os.fspath(path)
  return epath.Path(text if is_url(text) else os.path.abspath(text))


def as_str(path: PathLike) -> str:
  """``resolve(path)`` as the string every library takes (``gs://b/run``, ``/abs/run``)."""
  return os.fspath(resolve(path))


def join(base: PathLike, *parts: str) -> str:
  return os.fspath(epath.Path(os.fspath(base)).joinpath(*parts))


def exists(path: PathLike) -> bool:
  return resolve(path).exists()


def isdir(path: PathLike) -> bool:
  return resolve(path).is_dir()


def isfile(path: PathLike) -> bool:
  return resolve(path).is_file()


def makedirs(path: PathLike) -> None:
  resolve(path).mkdir(parents=True, exist_ok=True)


def makedirs_parent(path: PathLike) -> None:
  makedirs(resolve(path).parent)


def file_size(path: PathLike) -> int:
  return os.path.getsize(path) if not is_url(path) else int(resolve(path).stat().length)


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
  """``path`` itself if local; a URL's file copied into a temporary folder under its own name (for
  libraries that open only local files), removed on exit."""
  if not is_url(path):
    yield os.fspath(path)
    return
  source = resolve(path)
  with tempfile.TemporaryDirectory(prefix="maskbit_copy_") as folder:
    local = os.path.join(folder, source.name)
    with source.open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 22)
    yield local


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
  """Writes ``data`` so that readers see the old file or the new one, never a part.

  Locally through a temporary file in the same folder and ``os.replace``. An object store publishes an
  object whole when its upload ends, which is the same guarantee (and a rename there is a copy).
  """
  if is_url(path):
    resolve(path).write_bytes(data)
    return
  target = os.path.abspath(os.fspath(path))
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it owner-only; the file it replaces was not
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text_atomic(path: PathLike, text: str) -> None:
  write_bytes_atomic(path, text.encode("utf-8"))


def umask() -> int:
  """The process's umask (read by setting it and back: there is no getter)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


__all__ = ["as_str", "exists", "file_size", "is_url", "isdir", "isfile", "join", "local_copy", "makedirs",
           "makedirs_parent",
           "resolve", "umask", "write_bytes_atomic", "write_text_atomic"]
