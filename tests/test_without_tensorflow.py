"""Without the ``[tensorboard]`` extra (no tensorflow, no tensorboard): every module imports, a run's metric
writer falls back to ``workdir/metrics.jsonl`` and says so, and (slow) tfds reads a prepared split. The child
process is made to find neither package, as in an environment that never installed them (the slow test of
tests/test_wheel_install.py trains in a venv built without them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, drop_simulated_devices

# every import finder made blind to tensorflow and tensorboard, so that both ``import`` and
# ``importlib.util.find_spec`` (etils asks it) answer as where they are not installed
WITHOUT_TENSORFLOW = """
import sys

import pytest
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


PREPARE_TFDS = """
import sys

import pytest
import numpy as np
import tensorflow_datasets as tfds

class TinyShapes(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(16, 16, 3)), "label": tfds.features.ClassLabel(num_classes=4)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield i, {"image": np.full((16, 16, 3), 40 * i, np.uint8), "label": i % 4}

TinyShapes(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
"""

READ_TFDS = WITHOUT_TENSORFLOW + """
from maskbit_jax.data.sources import make_source
source = make_source(f"tfds:tiny_shapes:train:{sys.argv[1]}", 16)
ex = [source.raw(i) for i in range(len(source))]
print(len(ex), sorted(int(e["image"][0, 0, 0]) // 40 * 10 + int(e["label"]) for e in ex))
"""


@pytest.mark.slow
def test_tfds_reads_a_prepared_split_without_tensorflow(tmp_path):
  """Why tensorflow-datasets stays a core dependency: reading a prepared ArrayRecord split needs no TensorFlow
  (preparing one does, and is done here with it)."""
  env = drop_simulated_devices(dict(os.environ, PYTHONPATH=str(REPO)))
  prepared = subprocess.run([sys.executable, "-c", PREPARE_TFDS, str(tmp_path)], capture_output=True, text=True,
                            env=env)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  read = subprocess.run([sys.executable, "-c", READ_TFDS, str(tmp_path)], capture_output=True, text=True, env=env)
  assert read.returncode == 0, read.stderr[-3000:]
  assert read.stdout.split("\n")[-2] == "6 [0, 11, 22, 33, 40, 51]", read.stdout
