"""Name map for torchvision's ResNet50 (``models.resnet50``): ``params`` and ``batch_stats`` onto one state dict."""

from __future__ import annotations

import numpy as np

from maskbit_jax.convert.param_mapping import Buffer, ParamMapping
from maskbit_jax.models.resnet50 import STAGES

RESNET50_RULES = (
    (r"^(params|batch_stats)\.", ""),
    (r"(^|\.)(layer\d+)_(\d+)(?=\.|$)", r"\1\2.\3"),
    (r"(^|\.)downsample_(\d+)(?=\.|$)", r"\1downsample.\2"),
)
RESNET50_KEY_RULES = (
    (r"\.mean$", ".running_mean"),
    (r"\.var$", ".running_var"),
)


def batch_norm_names() -> list[str]:
  """PyTorch module names of every BatchNorm of ResNet50, in state-dict order."""
  names = ["bn1"]
  for stage, (_, blocks, _) in enumerate(STAGES, start=1):
    for block in range(blocks):
      names += [f"layer{stage}.{block}.bn{i}" for i in (1, 2, 3)]
      if block == 0:
        names.append(f"layer{stage}.{block}.downsample.1")
  return names


def _zero_count() -> np.ndarray:
  return np.zeros((), np.int64)


def resnet50_param_mapping() -> ParamMapping:
  """flax ResNet50 variables (``{"params", "batch_stats"}``) <-> torchvision ``resnet50`` keys.

  Convert the whole variables dict (not ``params`` alone): paths start with the
  collection name, which the mapping drops. ``num_batches_tracked`` appear as
  zero buffers (see the module docstring).
  """
  buffers = {f"{name}.num_batches_tracked": Buffer(_zero_count) for name in batch_norm_names()}
  return ParamMapping(module_rules=RESNET50_RULES, buffers=buffers, key_rules=RESNET50_KEY_RULES)
