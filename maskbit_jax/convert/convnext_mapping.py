"""Name map for torchvision's ConvNeXt (``models.convnext``)."""

from __future__ import annotations

from maskbit_jax.convert.param_mapping import ParamMapping


def convnext_param_mapping() -> ParamMapping:
  """flax ``ConvNeXt`` params <-> torchvision keys (``features.1.0.block.3.weight``, ``classifier.2.bias``)."""
  return ParamMapping(module_rules=(
      (r"(^|\.)features_(\d+)_(\d+)(?=\.|$)", r"\1features.\2.\3"),
      (r"(^|\.)(block|classifier)_(\d+)(?=\.|$)", r"\1\2.\3"),
  ))
