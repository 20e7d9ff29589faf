"""What a training run shows (``train/observe.py``): the progress line's rates leave the compile out."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from maskbit_jax.train import observe


def test_rates_count_from_the_restart_after_the_compiling_step():
  progress = observe.Progress(0, 100, global_batch=4)
  time.sleep(0.2)  # "compiling" step 1
  before_restart = time.perf_counter()
  assert progress.restart(1) >= 0.2  # the compile's seconds
  time.sleep(0.05)
  steps_per_s, images_per_s, eta = progress.rates(11)
  after = time.perf_counter()
  # 10 steps over a window inside [before_restart, after]: it cannot hold the 0.2 s of compile before it
  assert steps_per_s >= 10 / (after - before_restart)
  assert images_per_s == 4 * steps_per_s and np.isclose(eta, 89 / steps_per_s)


def test_grid_rows_are_labelled(tmp_path):
  grid = observe.Grid(np.zeros((4, 8, 8, 3), np.float32), ["a", "b", "", ""], 2, ("original", "reconstruction"))
  path = observe.save_grid(str(tmp_path), "recon", 7, grid)
  assert path.endswith("images/recon_00000007.png")
  assert Image.open(path).size[0] > 2 * 96  # upscaled cells and a column of row labels


def test_profile_switch_writes_a_trace_of_the_chosen_steps(tmp_path):
  import jax
  import jax.numpy as jnp

  with __import__("pytest").raises(ValueError, match="num_steps >= 0"):
    observe.StepProfiler(str(tmp_path), num_steps=-1)
  profiler = observe.StepProfiler(str(tmp_path / "profile"), start_step=1, num_steps=2)
  f = jax.jit(lambda x: x * 2 + 1)
  x, traced = jnp.ones(4), []
  for step in range(1, 5):
    profiler.before_step(step)
    x = f(x)
    traced.append(profiler.after_step(step, x))
  assert traced == [None, None, str(tmp_path / "profile" / "process_0"), None]  # steps 2..3, then stopped
  assert list((tmp_path / "profile" / "process_0").rglob("*.xplane.pb"))
  assert observe.StepProfiler(str(tmp_path / "off")).stop() is None and not (tmp_path / "off").exists()
