"""What a training run shows: metric writers (TensorBoard via clu, or JSON lines), a progress line, image grids.

Only process 0 writes; other processes get a no-op writer (clu's
``just_logging`` on non-main processes would still print, so they get none).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np

from maskbit_jax import image_io, paths
from maskbit_jax.tensorflow_guard import tensorflow_on_cpu_only
from maskbit_jax.train.metrics_file import JsonLinesWriter


class _NullWriter:
  def write_scalars(self, step, scalars):
    pass

  def write_images(self, step, images):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


TENSORBOARD_EXTRA = "pip install 'maskbit_jax[tensorboard]'"


def make_writer(workdir: str, *, is_main: bool):
  """Process 0's metric writer, and one line saying where the metrics go: clu's default writer (TensorBoard
  event files under ``workdir/tensorboard`` + log lines) where TensorFlow is installed (the ``[tensorboard]``
  extra), else JSON lines in ``workdir/metrics.jsonl``."""
  if not is_main:
    return _NullWriter()

  tensorflow_on_cpu_only()  # clu's writer imports TensorFlow
  try:
    from clu import metric_writers  # its package imports TensorFlow and TensorBoard
  except ImportError as e:
    path = paths.join(workdir, "metrics.jsonl")
    print(f"[metrics] go to {path} (JSON lines); no TensorBoard files, as TensorFlow is not installed "
          f"({e}): {TENSORBOARD_EXTRA} for them", flush=True)
    return JsonLinesWriter(path)  # the progress line prints them; clu's log lines are off (train/__main__)
  logdir = paths.join(workdir, "tensorboard")
  print(f"[metrics] go to {logdir} (TensorBoard event files)", flush=True)
  if paths.is_url(logdir):  # TensorFlow's file systems would not reach every scheme epath serves
    from maskbit_jax.train.event_file import EventFileWriter

    return metric_writers.MultiWriter([metric_writers.LoggingWriter(), EventFileWriter(logdir)])
  return metric_writers.create_default_writer(logdir, asynchronous=True)


class StepProfiler:
  """``experiment.profile``: a ``jax.profiler`` trace of steps ``start_step + 1 .. start_step + num_steps``
  (counted as the log counts them; the default start leaves the compile out) into ``logdir``, one folder per
  process, for TensorBoard's profile plugin or Perfetto. ``num_steps`` 0: off."""

  def __init__(self, logdir: str, *, start_step: int = 10, num_steps: int = 0, process_index: int = 0):
    if int(num_steps) < 0 or int(start_step) < 0:
      raise ValueError(f"experiment.profile needs start_step >= 0 and num_steps >= 0, got {start_step}, {num_steps}")
    self.logdir = paths.join(logdir, f"process_{process_index}")
    self.first, self.last = int(start_step) + 1, int(start_step) + int(num_steps)
    self.active = False

  def before_step(self, step: int) -> None:
    """``step``: the number the step about to run will have once done (1-based)."""
    if self.last >= self.first and step == self.first:
      import jax

      jax.profiler.start_trace(self.logdir)
      self.active = True

  def after_step(self, step: int, outputs) -> str | None:
    """Stops the trace after its last step (its outputs ready); returns the trace folder then."""
    if self.active and step >= self.last:
      return self.stop(outputs)
    return None

  def stop(self, outputs=None) -> str | None:
    if not self.active:
      return None

    if outputs is not None:
      jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self.active = False
    return self.logdir


def mean_metrics(history: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
  """Means of each scalar over the steps since the last log (host numpy values)."""
  if not history:
    return {}
  return {k: float(np.mean([np.asarray(h[k], np.float64) for h in history])) for k in history[0]}


class Progress:
  """``step 120/400 | 3.1 steps/s | 25 img/s | loss 0.123 | ETA 1m30s`` from wall-clock rates since the last call."""

  def __init__(self, start_step: int, total_steps: int, global_batch: int):
    self.total, self.batch = total_steps, global_batch
    self._step, self._time = start_step, time.perf_counter()

  def restart(self, step: int) -> float:
    """Starts the rate window at ``step`` (after a step that compiled); returns the seconds since the
    window's start (so the compile time)."""
    now = time.perf_counter()
    elapsed, self._step, self._time = now - self._time, step, now
    return elapsed

  def rates(self, step: int) -> tuple[float, float, float]:
    """``(steps/s, images/s, eta_seconds)`` since the previous call; resets the window."""
    now = time.perf_counter()
    dt = max(now - self._time, 1e-9)
    steps_per_s = (step - self._step) / dt
    self._step, self._time = step, now
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    return steps_per_s, steps_per_s * self.batch, eta

  def line(self, step: int, metrics: Mapping[str, float], keys: tuple[str, ...]) -> tuple[str, dict]:
    steps_per_s, images_per_s, eta = self.rates(step)
    shown = " | ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
    text = (f"step {step}/{self.total} | {steps_per_s:.2f} steps/s | {images_per_s:.1f} img/s"
            + (f" | {shown}" if shown else "") + f" | ETA {format_seconds(eta)}")
    return text, dict(steps_per_second=steps_per_s, images_per_second=images_per_s)


def format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Grid(NamedTuple):
  """What a task shows at ``experiment.generate_every``: ``images_bhwc`` in [0, 1] row-major, ``ncols`` a row,
  one caption per image and optionally one label per row (e.g. "original" / "reconstruction")."""

  images_bhwc: np.ndarray
  labels: list[str]
  ncols: int
  row_labels: tuple[str, ...] = ()


def save_grid(workdir: str, name: str, step: int, grid: Grid) -> str:
  """``workdir/images/{name}_{step:08d}.png``; returns the path."""
  path = paths.join(workdir, "images", f"{name}_{step:08d}.png")
  image_io.save_labelled_grid(path, np.asarray(grid.images_bhwc, np.float32), grid.labels, grid.ncols,
                              row_labels=grid.row_labels)
  return path
