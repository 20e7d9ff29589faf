"""TensorFlow (TensorBoard writer, tensorflow-datasets) never takes an accelerator from JAX."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

CHECK = """
import sys
{before}
from maskbit_jax.tensorflow_guard import tensorflow_on_cpu_only
ok = tensorflow_on_cpu_only()
import tensorflow as tf
print(ok, [d.device_type for d in tf.config.get_visible_devices()])
"""


def _run(before: str = "") -> str:
  proc = subprocess.run([sys.executable, "-c", CHECK.format(before=before)], cwd=REPO, capture_output=True,
                        text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.strip().splitlines()[-1], proc.stderr


def test_tensorflow_sees_the_cpu_only():
  out, _ = _run()
  assert out == "True ['CPU']"


def test_too_late_is_said_not_hidden(monkeypatch, caplog):
  """TensorFlow refuses new visible devices once it has used one (only on a machine with a GPU can that be
  provoked; here its refusal is given to the guard), and the guard says so instead of claiming success."""
  import tensorflow as tf

  from maskbit_jax.tensorflow_guard import tensorflow_on_cpu_only

  def refuse(devices, kind):
    raise RuntimeError("Visible devices cannot be modified after being initialized")

  monkeypatch.setattr(tf.config, "set_visible_devices", refuse)
  assert tensorflow_on_cpu_only() is False
  assert "initialised before maskbit_jax" in caplog.text


def test_the_writer_hides_them_before_importing_tensorflow(tmp_path):
  check = ("from maskbit_jax.train import observe; import sys; assert 'tensorflow' not in sys.modules; "
           "w = observe.make_writer(sys.argv[1], is_main=True); import tensorflow as tf; "
           "print([d.device_type for d in tf.config.get_visible_devices()], "
           "tf.config.get_visible_devices('GPU'))")
  proc = subprocess.run([sys.executable, "-c", check, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "['CPU'] []", proc.stderr[-2000:]
