"""Without the ``[tensorboard]`` extra (no tensorflow, no tensorboard): every module imports, and a run's metric
writer falls back to ``workdir/metrics.jsonl`` and says so. The child process is made to find neither package,
as in an environment that never installed them (tests/test_wheel_install.py's slow test installs one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, drop_simulated_devices

# every import finder made blind to tensorflow and tensorboard, so that both ``import`` and
# ``importlib.util.find_spec`` (etils asks it) answer as where they are not installed
WITHOUT_TENSORFLOW = """
import sys
class _Blind:
  def __init__(self, finder):
    self.finder = finder
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorboard"):
      return None
    return self.finder.find_spec(name, path, target)
  def __getattr__(self, name):
    return getattr(self.finder, name)
sys.meta_path[:] = [_Blind(f) for f in sys.meta_path]
"""

CHECK = WITHOUT_TENSORFLOW + """
import importlib, math, pkgutil
import maskbit_jax
names = [m.name for m in pkgutil.walk_packages(maskbit_jax.__path__, "maskbit_jax.") if not m.name.endswith("__main__")]
for name in names:
  importlib.import_module(name)
from maskbit_jax.train import observe
w = observe.make_writer(sys.argv[1], is_main=True)
w.write_scalars(1, {"loss": 0.5, "learning_rate": 1e-4})
w.flush()
w.write_scalars(2, {"loss": math.nan})
w.close()
print("imported", len(names))
"""


def test_every_module_imports_and_metrics_go_to_json_lines(tmp_path):
  env = drop_simulated_devices(dict(os.environ, PYTHONPATH=str(REPO)))
  proc = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert int(proc.stdout.split("imported ")[1]) > 50, proc.stdout
  said = [line for line in proc.stdout.splitlines() if line.startswith("[metrics]")]
  assert len(said) == 1 and f"go to {tmp_path}/metrics.jsonl" in said[0] and "maskbit_jax[tensorboard]" in said[0]
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[0] == {"step": 1, "loss": 0.5, "learning_rate": 1e-4} and lines[1]["step"] == 2, lines
  assert lines[1]["loss"] != lines[1]["loss"]  # NaN kept as NaN
  assert not (tmp_path / "tensorboard").exists()
