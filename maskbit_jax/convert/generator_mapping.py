"""Name map for MaskBit generator checkpoints (``LFQBert``).

The released files name the bit projection ``token_emb.*``; the model calls it
``input_proj.*`` (the reference renames it on load). ``mha.in_proj_weight``
packs the q, k and v rows; it maps onto one flax Dense kernel of width 3*D.
The scanned blocks (``transformer_layers/{attn,ffn}``, leading layer axis) are
the per-layer ``transformer.layers.<i>.{0,1}`` modules of the files.
"""

from __future__ import annotations

from maskbit_jax.bits import bit_weights_np
from maskbit_jax.convert.param_mapping import GENERATOR_KEY_RULES, GENERATOR_RULES, Buffer, LayerStack, ParamMapping

RELEASED_RENAMES = {"token_emb": "input_proj"}
GENERATOR_LAYERS = LayerStack("transformer_layers", {"attn": "transformer_layers_{}_0",
                                                     "ffn": "transformer_layers_{}_1"})


def generator_param_mapping(bits_per_split: int) -> ParamMapping:
  return ParamMapping(GENERATOR_RULES, buffers={"bits_to_indices": Buffer(lambda: bit_weights_np(bits_per_split))},
                      renames=RELEASED_RENAMES, key_rules=GENERATOR_KEY_RULES, layer_stacks=(GENERATOR_LAYERS,))
