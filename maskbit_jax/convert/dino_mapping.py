"""Names and files of BAR-FSQ training's DINO discriminator (``models.dino_discriminator``).

The frozen backbone loads from the published DINO ViT-S/8 file (``blocks.<i>.attn.qkv.weight``,
``cls_token``); the heads from the reference's ``heads.<i>.*`` state (spectral-norm ``weight_orig``,
``weight_u``, ``weight_v``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax import paths
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.param_mapping import ParamMapping, torch_state_to_flax
from maskbit_jax.models.dino_discriminator import DinoDiscriminator, abstract_discriminator_variables


def dino_backbone_mapping() -> ParamMapping:
  """``DinoBackbone`` params <-> the published DINO ViT names (``blocks.<i>.attn.qkv.weight``, ``cls_token``)."""
  return ParamMapping(module_rules=((r"(^|\.)blocks_(\d+)(?=\.|$)", r"\1blocks.\2"),))


DINO_FILE_HINT = ("the DINO ViT-S/8 discriminator backbone 'dino_vit_small_patch8_224.pth', published at "
                  "https://huggingface.co/nyu-visionx/RAE-collections/blob/main/discs/dino_vit_small_patch8_224.pth")
# In the published file, never read by the discriminator.
UNUSED_BACKBONE_KEYS = ("norm.weight", "norm.bias")


def backbone_from_torch(state: Mapping[str, np.ndarray], abstract_backbone: Any, *, source: str = "checkpoint") -> dict:
  """The published DINO state dict -> ``backbone`` params (strict; the final ``norm`` is dropped, and the
  key bias zeroed as the reference does; it cancels in the softmax anyway)."""
  state = {k: np.asarray(v) for k, v in state.items() if k not in UNUSED_BACKBONE_KEYS}
  for key in list(state):
    if key.endswith(".attn.qkv.bias"):
      bias = state[key].copy()
      c = bias.size // 3
      bias[c:2 * c] = 0.0
      state[key] = bias
  return torch_state_to_flax(state, abstract_backbone, dino_backbone_mapping(), source=source)


_HEAD_PARTS = (("block0", "0.0", "0.1"), ("residual", "1.fn.0", "1.fn.1"), ("out", "2", None))


def heads_from_torch(state: Mapping[str, np.ndarray], num_heads: int) -> tuple[dict, dict]:
  """The reference's ``heads.<i>.*`` (or bare ``<i>.*``) state -> ``(params, spectral)`` for ``heads_<i>``."""
  get = lambda k: np.asarray(state[f"heads.{k}"] if f"heads.{k}" in state else state[k], np.float32)
  params, spectral = {}, {}
  for i in range(num_heads):
    p_head, s_head = {}, {}
    for name, conv, norm in _HEAD_PARTS:
      conv_p = {"kernel": np.transpose(get(f"{i}.{conv}.weight_orig"), (2, 1, 0)), "bias": get(f"{i}.{conv}.bias")}
      conv_s = {"u": get(f"{i}.{conv}.weight_u"), "v": get(f"{i}.{conv}.weight_v")}
      if norm is None:
        p_head[name], s_head[name] = conv_p, conv_s
      else:
        p_head[name] = {"conv": conv_p, "norm": {"weight": get(f"{i}.{norm}.weight"), "bias": get(f"{i}.{norm}.bias")}}
        s_head[name] = {"conv": conv_s}
    params[f"heads_{i}"], spectral[f"heads_{i}"] = p_head, s_head
  return params, spectral


def load_dino_backbone(path, module: DinoDiscriminator) -> dict:
  """Reads the published DINO file (.pth/.safetensors/.npz, no torch) into ``backbone`` params."""
  path = os.fspath(path)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} not found: put {DINO_FILE_HINT} there (maskbit_jax never downloads weights)")
  abstract = abstract_discriminator_variables(module)["params"]["backbone"]
  return jax.tree.map(jnp.asarray, backbone_from_torch(read_state_dict(path), abstract, source=path))
