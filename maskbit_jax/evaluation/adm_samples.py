"""ADM sample batches on disk: uint8 NHWC images as one ``arr_0`` array of an ``.npz``, streamed.

The format the ADM evaluation suite (``utils/adm_eval_suite.py``) reads for the
generator tables; ``images_to_uint8`` quantises as the reference sampling script.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile

import numpy as np

from maskbit_jax import paths
from maskbit_jax.image_io import to_uint8


class AdmSamplesWriter:
  """Streams uint8 NHWC images into an ADM sample ``.npz`` (one array ``arr_0`` ``[N, H, W, 3]``).

  The total count is fixed up front (the ``.npy`` header holds the shape), so the
  batches go straight into the zip member without keeping all images in memory::

    with AdmSamplesWriter(path, num_images=50_000, height=256, width=256) as w:
      for batch in batches:
        w.write(batch_u8)

  A URL's file (``gs://...``) is written to a local temporary file and uploaded whole on ``close``.
  """

  def __init__(self, path: str | os.PathLike, num_images: int, height: int, width: int, channels: int = 3):
    self.path = os.fspath(path)
    self.shape = (int(num_images), int(height), int(width), int(channels))
    self.written = 0
    self._local = self.path
    if paths.is_url(self.path):
      fd, self._local = tempfile.mkstemp(prefix="maskbit_samples_", suffix=".npz")
      os.close(fd)
    self._zip = zipfile.ZipFile(self._local, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
    self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
    np.lib.format.write_array_header_1_0(
        self._member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                       "fortran_order": False, "shape": self.shape})

  def write(self, images_uint8) -> None:
    x = np.asarray(images_uint8)
    if x.dtype != np.uint8:
      raise ValueError(f"ADM samples must be uint8 (use images_to_uint8), got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1:] != self.shape[1:]:
      hint = " (it looks like NCHW: transpose to NHWC)" if x.ndim == 4 and x.shape[1] == self.shape[3] else ""
      raise ValueError(f"ADM samples must be NHWC {list(self.shape[1:])}, got shape {x.shape}{hint}")
    if self.written + x.shape[0] > self.shape[0]:
      raise ValueError(f"more than the declared {self.shape[0]} images")
    self._member.write(np.ascontiguousarray(x).tobytes())
    self.written += x.shape[0]

  def close(self) -> None:
    if self._zip is None:
      return
    self._member.close()
    self._zip.close()
    self._zip = None
    if self.written != self.shape[0]:
      os.remove(self._local)
      raise ValueError(f"{self.path}: {self.written} images written, {self.shape[0]} declared; file removed")
    if self._local != self.path:
      try:
        with open(self._local, "rb") as src, paths.resolve(self.path).open("wb") as dst:
          shutil.copyfileobj(src, dst, 1 << 22)
      finally:
        os.remove(self._local)

  def __enter__(self) -> AdmSamplesWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    elif self._zip is not None:
      self._member.close()
      self._zip.close()
      if self._local != self.path:
        os.remove(self._local)
      self._zip = None
      os.remove(self.path)


def write_adm_samples_npz(path: str | os.PathLike, images_uint8) -> None:
  """Writes images uint8 ``[N, H, W, 3]`` as the ADM sample format (``arr_0``), to ``path`` exactly."""
  x = np.asarray(images_uint8)
  if x.ndim != 4 or x.shape[-1] != 3:
    hint = " (it looks like NCHW: transpose to NHWC)" if x.ndim == 4 and x.shape[1] == 3 else ""
    raise ValueError(f"ADM samples must be uint8 NHWC [N, H, W, 3], got shape {x.shape}{hint}")
  with AdmSamplesWriter(path, x.shape[0], x.shape[1], x.shape[2], x.shape[3]) as writer:
    writer.write(x)


def images_to_uint8(images) -> np.ndarray:
  """Float [0, 1] images to uint8 on the host as the reference sampling script does (``image_io.to_uint8``:
  clamp, x255, truncate)."""
  return to_uint8(np.asarray(images))
