"""Name map for the VQGAN+ discriminator (``models.discriminator``), with its blur kernels as checked buffers."""

from __future__ import annotations

from typing import Any, Mapping

from maskbit_jax.convert.param_mapping import Buffer, ParamMapping
from maskbit_jax.models.discriminator import blur_kernel, config_get, validate_discriminator_config

# flax module path -> PyTorch module path (leaf renames are ParamMapping's).
DISCRIMINATOR_RULES = (
    (r"(^|\.)block_in(?=\.|$)", r"\1block_in.0"),
    (r"(^|\.)blocks_(\d+)\.conv(?=\.|$)", r"\1blocks.\2.0"),
    (r"(^|\.)blocks_(\d+)\.norm(?=\.|$)", r"\1blocks.\2.2"),
    (r"(^|\.)to_logits_hidden(?=\.|$)", r"\1to_logits.0"),
    (r"(^|\.)to_logits_out(?=\.|$)", r"\1to_logits.2"),
)


def discriminator_param_mapping(cfg: Mapping[str, Any]) -> ParamMapping:
  """flax <-> PyTorch names; with ``blur_resample`` the ``blocks.i.1.kernel`` buffers are checked on load."""
  validate_discriminator_config(cfg)
  buffers = {}
  if bool(config_get(cfg, "blur_resample", False)):
    k = int(config_get(cfg, "blur_kernel_size", 4))
    make = lambda: blur_kernel(k)[None, None]  # [1, 1, k, k], as the reference stores it
    buffers = {f"blocks.{i}.1.kernel": Buffer(make) for i in range(int(config_get(cfg, "num_stages", 3)))}
  return ParamMapping(DISCRIMINATOR_RULES, buffers=buffers)
