"""TensorBoard scalars written through etils.epath, for a log folder that is a URL (``gs://...``).

clu's writer goes through TensorFlow's own file systems, which know ``gs://`` but no other scheme epath
serves, and which ignore the emulator settings (``STORAGE_EMULATOR_HOST``) every other GCS client here
honours. This writer makes the same event files (records of ``Event`` protos, each framed by its length
and masked CRC-32C) with TensorBoard's protos and no TensorFlow. An object cannot be appended to, so
each flush uploads the whole file again, as TensorFlow's GCS writer does; a flush happens at least every
``FLUSH_SECONDS`` while scalars arrive, so a run that dies loses at most that much.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Mapping

import numpy as np
from etils import epath

FLUSH_SECONDS = 60.0


def _masked_crc(data: bytes) -> int:
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

  return masked_crc32c(data)


def frame(record: bytes) -> bytes:
  """One TFRecord: ``uint64 length, uint32 masked_crc(length), data, uint32 masked_crc(data)``, little-endian."""
  header = struct.pack("<Q", len(record))
  return header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record))


def _event(step: int, **fields) -> bytes:
  from tensorboard.compat.proto import event_pb2

  return event_pb2.Event(wall_time=time.time(), step=int(step), **fields).SerializeToString()


def scalar_event(step: int, scalars: Mapping[str, float]) -> bytes:
  from tensorboard.compat.proto import summary_pb2

  values = [summary_pb2.Summary.Value(tag=k, simple_value=float(np.asarray(v))) for k, v in scalars.items()]
  return _event(step, summary=summary_pb2.Summary(value=values))


class EventFileWriter:
  """clu's ``MetricWriter`` calls the loop makes (scalars, flush, close), into ``logdir/events.out.tfevents.*``."""

  def __init__(self, logdir: str):
    self._path = epath.Path(logdir) / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self._records = [frame(_event(0, file_version="brain.Event:2"))]
    self._lock = threading.Lock()
    self._written, self._flushed_at = 0, time.monotonic()

  @property
  def path(self) -> epath.Path:
    return self._path

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    with self._lock:
      self._records.append(frame(scalar_event(step, scalars)))
    if time.monotonic() - self._flushed_at > FLUSH_SECONDS:
      self.flush()

  def write_images(self, step, images):
    raise NotImplementedError("images go to workdir/images/ as PNG files, not to TensorBoard")

  def write_hparams(self, hparams):
    del hparams  # config.json in the workdir holds them

  def flush(self) -> None:
    with self._lock:
      if self._written == len(self._records):
        return
      self._path.parent.mkdir(parents=True, exist_ok=True)
      self._path.write_bytes(b"".join(self._records))
      self._written, self._flushed_at = len(self._records), time.monotonic()

  def close(self) -> None:
    self.flush()


__all__ = ["EventFileWriter", "frame", "scalar_event"]
