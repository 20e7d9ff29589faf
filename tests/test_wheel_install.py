"""The wheel installs and works outside the source tree: configs by name, sampling, the console scripts.

The wheel is built from a copy of the checkout's files (the checkout's own build/ stays untouched) and
installed without its dependencies into a fresh virtual environment that borrows the test interpreter's
packages through a plain path entry (so the checkout's editable install does not come along). About 20 s.
The slow test borrows them less TensorFlow and TensorBoard, and trains there.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from PIL import Image

import proc_wait
from conftest import REPO, drop_simulated_devices

def _copy_checkout(dest) -> None:
  """The files git would ship (tracked, or new and not ignored), links kept as links."""
  names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                          "pyproject.toml", "README.md", "maskbit_jax", "configs"],
                         cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
  for name in filter(None, names):
    src, dst = REPO / name, dest / name
    if not src.exists() and not src.is_symlink():  # deleted in the work tree, not yet in git
      continue
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
      os.symlink(os.readlink(src), dst)
    else:
      shutil.copy2(src, dst)


def _site_without_tensorflow(dest: pathlib.Path) -> pathlib.Path:
  """The test interpreter's packages, linked one by one into ``dest``, less TensorFlow and TensorBoard (the
  ``[tensorboard]`` extra): an environment that never installed them, with nothing downloaded."""
  dest.mkdir()
  extra = lambda name: name == "tensorflow" or name.startswith(("tensorflow-", "tensorflow_cpu", "tensorboard"))
  for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
    if not extra(entry.name):
      (dest / entry.name).symlink_to(entry)
  return dest


def _venv_with_wheel(tmp_path, borrowed: pathlib.Path | None = None):
  """A venv holding the wheel, that takes its dependencies from ``borrowed`` (the test interpreter's)."""
  src, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
  _copy_checkout(src)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                  str(wheels), str(src)], check=True, capture_output=True)
  (wheel,) = wheels.glob("maskbit_jax-*.whl")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  # a path line only: the test interpreter's .pth files (the editable finder of the checkout) are not run
  (pathlib.Path(site) / "borrowed.pth").write_text(str(borrowed or sysconfig.get_paths()["purelib"]) + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                  str(wheel)], check=True, capture_output=True)
  return venv


SCRIPT = """
import sys, jax, numpy as np, maskbit_jax
assert maskbit_jax.__file__.startswith(sys.argv[1]), maskbit_jax.__file__
cfg = maskbit_jax.load_config("generator_tiny")
gen = maskbit_jax.load_generator(cfg, random_init=True)
tok = maskbit_jax.load_tokenizer(cfg, random_init=True)
out = maskbit_jax.sample(gen, tok, [1, 2], jax.random.key(0), num_steps=2)
assert np.isfinite(np.asarray(out["images"])).all()
print("images", out["images"].shape, "config", maskbit_jax.configs.__file__)
"""


def test_the_installed_wheel_loads_configs_by_name_and_samples(tmp_path):
  venv = _venv_with_wheel(tmp_path)
  run_dir = tmp_path / "elsewhere"  # outside the source tree: `import maskbit_jax` is the installed one
  run_dir.mkdir()
  env = drop_simulated_devices(dict(os.environ, PYTHONPATH=""))
  proc = proc_wait.run([venv / "bin" / "python", "-c", "import maskbit_jax.configs\n" + SCRIPT, str(venv)],
                       cwd=run_dir, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "images (2, " in proc.stdout and f"config {venv}" in proc.stdout, proc.stdout

  for script in ("maskbit-train", "maskbit-sample", "maskbit-evaluate", "maskbit-convert", "maskbit-pretokenize",
                 "maskbit-reconstruct", "maskbit-edit"):
    assert (venv / "bin" / script).is_file(), script
  out = tmp_path / "out"
  proc = proc_wait.run([venv / "bin" / "maskbit-sample", "--config", "generator_tiny", "--random_init", "--classes",
                        "1", "--num_steps", "2", "--out", str(out)], cwd=run_dir, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (png,) = out.glob("00000_class1.png")
  assert np.asarray(Image.open(png)).ndim == 3

  proc = proc_wait.run([venv / "bin" / "maskbit-sample", "--config", "generatr_tiny", "--random_init", "--classes",
                        "1", "--out", str(out)], cwd=run_dir, env=env)
  assert proc.returncode == 2 and "did you mean 'generator_tiny'" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_without_the_tensorboard_extra_training_writes_json_lines_and_says_so(tmp_path):
  venv = _venv_with_wheel(tmp_path, borrowed=_site_without_tensorflow(tmp_path / "site"))
  run_dir = tmp_path / "elsewhere"
  run_dir.mkdir()
  env = drop_simulated_devices(dict(os.environ, PYTHONPATH=""))
  proc = proc_wait.run([venv / "bin" / "python", "-c", "import importlib.util as u; print(u.find_spec('tensorflow'), "
                        "u.find_spec('tensorboard'), u.find_spec('tensorflow_datasets') is not None)"],
                       cwd=run_dir, env=env)
  assert proc.stdout.split() == ["None", "None", "True"], proc.stdout + proc.stderr[-2000:]
  steps = 6
  proc = proc_wait.run([venv / "bin" / "maskbit-train", "--config", "tokenizer_tiny", "--workdir", "run",
                        f"--config.training.max_train_steps={steps}"], cwd=run_dir, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  said = [line for line in proc.stdout.splitlines() if line.startswith("[metrics]")]
  assert len(said) == 1 and f"go to {run_dir}/run/metrics.jsonl" in said[0], proc.stdout
  lines = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["step"] == steps and any("total_loss" in line for line in lines), lines
  assert not (run_dir / "run" / "tensorboard").exists()
  assert (run_dir / "run" / "summary.json").is_file()
