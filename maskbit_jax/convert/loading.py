"""The converter's side of loading weights: a released state dict through a ``ParamMapping``.

Our own folders and the choice between them and released files are ``maskbit_jax.checkpointing``'s
(``load_weights``, the one loader); this is that loader with the plain name-mapping conversion.
"""

from __future__ import annotations

import os
from typing import Any

from maskbit_jax import checkpointing
from maskbit_jax.checkpointing import check_params_match, restore_params
from maskbit_jax.convert.param_mapping import ParamMapping, torch_state_to_flax


def load_params(checkpoint: str | os.PathLike, abstract_params: Any, mapping: ParamMapping, kind: str) -> Any:
  """Params from one of our Orbax checkpoints of ``kind``, or from a PyTorch-format file via ``mapping``."""
  return checkpointing.load_weights(
      checkpoint, abstract_params, kind=kind, mapping=mapping,
      from_state_dict=lambda state, source: torch_state_to_flax(state, abstract_params, mapping, source=source))


__all__ = ["check_params_match", "load_params", "restore_params"]
