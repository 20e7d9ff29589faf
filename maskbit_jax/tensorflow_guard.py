"""TensorFlow in a JAX process: kept off the accelerators.

TensorFlow comes in only for the TensorBoard writer (clu; the ``[tensorboard]`` extra) and, where it is
installed, tensorflow-datasets. Imported as it is, it claims every GPU it sees and reserves most of each one's
memory for itself, memory JAX then lacks. Before anything of ours imports it, :func:`tensorflow_on_cpu_only`
imports it with no GPU or TPU visible to it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def tensorflow_on_cpu_only() -> bool:
  """Hides the accelerators from TensorFlow (once per process, before it has used a device); returns whether
  TensorFlow is now limited to the CPU. False when it is not installed, or when something started using it
  first (then its devices cannot change any more, which is logged)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
  except ImportError:
    return False
  try:
    for kind in ("GPU", "TPU"):
      tf.config.set_visible_devices([], kind)
  except RuntimeError as e:  # "Visible devices cannot be modified after being initialized"
    log.warning("TensorFlow was initialised before maskbit_jax could keep it off the accelerators: %s", e)
    return False
  return all(d.device_type == "CPU" for d in tf.config.get_visible_devices())
