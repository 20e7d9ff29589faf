"""Rebuilds the fixtures' "recipe" weights with numpy alone (golden README, section 6).

The big pretrained-style nets of the fixtures (Taming VQGAN, ResNet50, VGG16,
InceptionV3) are not shipped; their weights are a deterministic function of a
base seed, a gain and each tensor's name and shape.
"""

from __future__ import annotations

import json
import pathlib
import zlib
from collections import OrderedDict

import numpy as np


def recipe_tensor(key: str, shape, base_seed: int, gain: float) -> np.ndarray:
  seed = (base_seed + zlib.crc32(key.encode("utf-8"))) % 2**32
  n = np.random.RandomState(seed).standard_normal(tuple(shape))
  last = key.split(".")[-1]
  if last == "num_batches_tracked":
    return np.zeros(tuple(shape), np.int64)
  if last == "running_mean":
    out = 0.1 * n
  elif last == "running_var":
    out = np.exp(0.2 * n)
  elif len(shape) >= 2:
    out = n * gain / np.sqrt(np.prod(shape[1:]))
  elif last == "weight":
    out = 1.0 + 0.1 * n
  elif last == "bias":
    out = 0.1 * n
  else:
    raise ValueError(f"the recipe has no rule for {key} {shape}")
  return out.astype(np.float32)


def recipe_state_dict(manifest_path: pathlib.Path) -> "OrderedDict[str, np.ndarray]":
  """Every tensor the recipe manifest lists, in its order."""
  manifest = json.loads(pathlib.Path(manifest_path).read_text())
  return OrderedDict((key, recipe_tensor(key, shape, manifest["base_seed"], manifest["gain"]))
                     for key, shape in manifest["keys"])
