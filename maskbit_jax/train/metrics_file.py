"""Training metrics as JSON lines (``workdir/metrics.jsonl``): the writer when TensorBoard is not installed.

clu's writers all come through ``clu.metric_writers``, whose package imports TensorFlow, so without the
``[tensorboard]`` extra none of them can be used; this one needs only the standard library and etils. Each
``write_scalars`` becomes one line, ``{"step": 120, "loss": 0.123, ...}``, readable with
``pandas.read_json(path, lines=True)`` or any JSON parser. A local file is appended to at each flush; an
object (``gs://...``) cannot be appended to, so each flush uploads the whole file again, as
:mod:`maskbit_jax.train.event_file` does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import numpy as np

from maskbit_jax import paths


def scalar_line(step: int, scalars: Mapping[str, float]) -> str:
  """``{"step": step, name: value, ...}`` plus a newline; non-finite values as JSON's ``NaN``/``Infinity``."""
  return json.dumps({"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}) + "\n"


class JsonLinesWriter:
  """clu's ``MetricWriter`` calls the loop makes (scalars, flush, close), as lines of ``path``."""

  def __init__(self, path: str):
    self.path, self._is_url = paths.resolve(path), paths.is_url(path)
    # an object is rewritten whole: a resumed run keeps the lines already there
    self._uploaded = self.path.read_text() if self._is_url and self.path.exists() else ""
    self._pending: list[str] = []
    self._lock = threading.Lock()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    with self._lock:
      self._pending.append(scalar_line(step, scalars))

  def write_images(self, step, images):
    raise NotImplementedError("images go to workdir/images/ as PNG files")

  def write_hparams(self, hparams):
    del hparams  # config.json in the workdir holds them

  def flush(self) -> None:
    with self._lock:
      if not self._pending:
        return
      self.path.parent.mkdir(parents=True, exist_ok=True)
      text, self._pending = "".join(self._pending), []
      if self._is_url:
        self._uploaded += text
        self.path.write_text(self._uploaded)
      else:
        with open(self.path, "a") as f:
          f.write(text)

  def close(self) -> None:
    self.flush()


__all__ = ["JsonLinesWriter", "scalar_line"]
