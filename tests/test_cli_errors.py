"""A user's mistake on the command line is one ``error:`` line and exit code 2; ``--debug`` shows the traceback."""

from __future__ import annotations

import sys

import pytest

import proc_wait
from conftest import REPO
from maskbit_jax import cli_errors
from maskbit_jax.config import ConfigKeyError, load_config


def _cli(*args, env=None):
  return proc_wait.run([sys.executable, "-m", *args], cwd=REPO, env=env)


@pytest.mark.parametrize("argv, message", [
    (["maskbit_jax.train", "--config", "configs/tokenizer_tiny.py", "--workdir", "{tmp}/w",
      "--config.trainig.max_train_steps=1"], "did you mean 'training'?"),
    (["maskbit_jax.convert", "--config", "configs/tokenizer_tiny.py", "--checkpoint", "{tmp}/nope.bin",
      "--out", "{tmp}/o"], "checkpoint not found: {tmp}/nope.bin"),
    (["maskbit_jax.sample", "--config", "{tmp}/missing.py", "--random_init", "--classes", "1", "--out", "{tmp}/s"],
     "config file not found: {tmp}/missing.py"),
])
def test_user_errors_are_one_line(tmp_path, argv, message):
  argv = [a.format(tmp=tmp_path) for a in argv]
  proc = _cli(*argv)
  assert proc.returncode == cli_errors.EXIT_USER_ERROR, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message.format(tmp=tmp_path) in errors[0], proc.stderr[-2000:]


def test_debug_shows_the_traceback(tmp_path):
  proc = _cli("maskbit_jax.convert", "--debug", "--config", "configs/tokenizer_tiny.py",
              "--checkpoint", str(tmp_path / "nope.bin"), "--out", str(tmp_path / "o"))
  assert proc.returncode == 1 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


@pytest.mark.parametrize("override, hint", [
    ("training.max_train_stepz=3", "did you mean 'training.max_train_steps'?"),
    ("modle.vq_model.token_size=3", "did you mean 'model'?"),
    ("training.zzz=3", "training has "),
])
def test_misspelt_keys_suggest_the_field(override, hint):
  with pytest.raises(ConfigKeyError) as err:
    load_config(str(REPO / "configs" / "tokenizer_tiny.py"), [f"--config.{override}"])
  assert hint in str(err.value) and not str(err.value).startswith("'")


def test_a_checkout_that_shadows_the_package_says_so(tmp_path):
  """Python started in the folder above a checkout named maskbit_jax imports the checkout, not the package."""
  (tmp_path / "maskbit_jax").symlink_to(REPO)
  env = dict(__import__("os").environ, PYTHONPATH="")
  proc = proc_wait.run([sys.executable, "-c", "import maskbit_jax"], cwd=tmp_path, env=env)
  assert proc.returncode == 1 and "found the source checkout" in proc.stderr.splitlines()[-1], proc.stderr[-1000:]
