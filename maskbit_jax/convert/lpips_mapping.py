"""Name map for the LPIPS network (``models.vgg_lpips``): torchvision VGG16 ``features`` + the ``lin<k>`` heads."""

from __future__ import annotations

from maskbit_jax.convert.param_mapping import ParamMapping

LPIPS_RULES = (
    (r"(^|\.)features_(\d+)(?=\.|$)", r"\1features.\2"),
    (r"(^|\.)heads_(\d+)(?=\.|$)", r"\1lin\2.model.1"),
)


def lpips_param_mapping() -> ParamMapping:
  """flax ``LPIPS`` params <-> PyTorch keys ``features.<i>.{weight,bias}`` + ``lin<k>.model.1.weight``.

  A bare ``VGG16Features`` (params ``features_<i>``) maps onto the same
  ``features.<i>.*`` keys, so the ``features.*`` tensors of a torchvision VGG16 file load
  into it directly.
  """
  return ParamMapping(module_rules=(((r"^net\.", ""),) + LPIPS_RULES))
