"""Name map for BAR generator checkpoints (``BAR``) and the standalone MBM head (``MaskBitModelingHead``).

flax paths map onto the PyTorch names with a few module rewrites
(``blocks_3`` -> ``blocks.3``, ``transformer_0`` -> ``transformer.0``,
``adaLN_modulation_1`` -> ``adaLN_modulation.1``, ``mlp_0`` -> ``mlp.0``);
raw parameters (``cls_token``, ``pos_embed``, ``t_embedder.W``, ...) keep
their names, Linear kernels are transposed. The scanned blocks (``blocks/...``,
leading layer axis) are the per-layer ``blocks.<i>`` modules of the files.

The released files also hold, once per block, the persistent RoPE buffers
``blocks.<i>.attn.rope.freqs_cos/freqs_sin``. The port derives these tables
from the config; PyTorch's float32 cos/sin and ours can differ in the last
bit, so they are checked (presence, shape, values within ``ROPE_ATOL``) here
instead of through ``ParamMapping.buffers``, whose check is bit-exact.
Everything else is strict exactly like the MaskBit converters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from maskbit_jax.convert.param_mapping import (CheckpointMismatchError, LayerStack, ParamMapping,
                                               expected_torch_shapes, flax_to_torch_state, torch_state_to_flax)
from maskbit_jax.models.bar_generator import BarGenerator, rope_tables

BAR_RULES = (
    (r"(^|\.)(blocks|transformer)_(\d+)(?=\.|$)", r"\1\2.\3"),
    (r"(^|\.)(adaLN_modulation|mlp)_(\d+)(?=\.|$)", r"\1\2.\3"),
)
BAR_LAYERS = LayerStack("blocks", {"": "blocks_{}"})
ROPE_ATOL = 1e-6
CHECKPOINT_KIND = "bar_generator"

_BLOCK_KEYS = ("norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.q_norm.weight", "attn.k_norm.weight",
               "attn.proj.weight", "attn.proj.bias", "attn.rope.freqs_cos", "attn.rope.freqs_sin", "norm2.weight",
               "mlp.w12.weight", "mlp.w12.bias", "mlp.w3.weight", "mlp.w3.bias", "adaLN_modulation.1.weight",
               "adaLN_modulation.1.bias")
_HEAD_BLOCK_KEYS = ("in_ln.weight", "mlp.w12.weight", "mlp.w12.bias", "mlp.w3.weight", "mlp.w3.bias",
                    "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")


def bar_param_mapping() -> ParamMapping:
  """The name map of both the generator and the standalone head (no buffers: see the module docstring)."""
  return ParamMapping(BAR_RULES, layer_stacks=(BAR_LAYERS,))


def mbm_head_key_order(num_layers: int) -> list[str]:
  """``MaskBitModelingHead.state_dict()`` key order."""
  keys = ["input_embed.weight", "input_proj.weight", "input_proj.bias", "ln_pre.weight"]
  keys += [f"transformer.{i}.{k}" for i in range(num_layers) for k in _HEAD_BLOCK_KEYS]
  keys += ["output_embed.weight", "output_embed.bias", "t_embedder.W", "t_embedder.mlp.0.weight",
           "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
           "adaln_before_head.norm_final.weight", "adaln_before_head.adaLN_modulation.1.weight",
           "adaln_before_head.adaLN_modulation.1.bias"]
  return keys


def bar_key_order(module: BarGenerator) -> list[str]:
  """``BAR.state_dict()`` key order (the released files' order), RoPE buffers included."""
  keys = ["cls_token", "pos_embed", "target_aware_pos_embed", "timesteps_embeddings"]
  keys += [f"blocks.{i}.{k}" for i in range(module.depth) for k in _BLOCK_KEYS]
  keys += ["norm.weight"] + [f"lm_head.{k}" for k in mbm_head_key_order(module.head_layers)]
  keys += ["latent_condition_proj.weight", "latent_condition_proj.bias", "embeddings.weight",
           "input_embeddings.weight", "input_merge.weight", "input_merge.bias"]
  return keys


def rope_buffers(module: BarGenerator) -> "OrderedDict[str, np.ndarray]":
  """The per-block RoPE buffers this config implies (``[P + steps, head_dim]`` each)."""
  cos, sin = rope_tables(module.head_dim, module.rope_side, module.prefix_len)
  out = OrderedDict()
  for i in range(module.depth):
    out[f"blocks.{i}.attn.rope.freqs_cos"] = np.array(cos)
    out[f"blocks.{i}.attn.rope.freqs_sin"] = np.array(sin)
  return out


def expected_bar_shapes(module: BarGenerator, abstract_params) -> "OrderedDict[str, tuple[int, ...]]":
  """PyTorch key -> shape of every tensor a released checkpoint of this config holds (buffers included)."""
  shapes = expected_torch_shapes(bar_param_mapping(), abstract_params)
  shapes.update((k, v.shape) for k, v in rope_buffers(module).items())
  return shapes


def bar_state_to_flax(state: Mapping[str, np.ndarray], abstract_params, module: BarGenerator, *,
                      source: str = "checkpoint") -> dict:
  """Strictly converts a ``BAR`` state dict (released layout) into flax params.

  Raises CheckpointMismatchError naming every missing or unexpected key,
  every shape mismatch, and every RoPE buffer that is absent or does not
  equal (within ``ROPE_ATOL``) the table the config implies.
  """
  state = OrderedDict(state)
  problems = []
  for key, table in rope_buffers(module).items():
    if key not in state:
      problems.append(f"missing key {key!r} (the model has it, the {source} does not)")
      continue
    got = np.asarray(state.pop(key))
    if got.shape != table.shape:
      problems.append(f"shape mismatch for buffer {key!r}: {source} has {got.shape}, model expects {table.shape}")
    elif not np.allclose(got, table, rtol=0.0, atol=ROPE_ATOL):
      problems.append(f"buffer {key!r} differs from the RoPE table this config implies "
                      f"(max abs diff {np.max(np.abs(got - table)):.3g})")
  try:
    params = torch_state_to_flax(state, abstract_params, bar_param_mapping(), source=source)
  except CheckpointMismatchError as err:
    if not problems:
      raise
    raise CheckpointMismatchError(str(err) + "\n  " + "\n  ".join(problems)) from None
  if problems:
    raise CheckpointMismatchError(f"{source} does not match the model ({len(problems)} problem(s)):\n  "
                                  + "\n  ".join(problems))
  return params


def bar_flax_to_torch_state(params, module: BarGenerator) -> "OrderedDict[str, np.ndarray]":
  """Flax params -> a ``BAR`` state dict in the released layout and order (RoPE buffers regenerated)."""
  state = flax_to_torch_state(params, bar_param_mapping())
  state.update(rope_buffers(module))
  order = bar_key_order(module)
  out = OrderedDict((k, state[k]) for k in order if k in state)
  out.update((k, v) for k, v in state.items() if k not in out)
  return out


def mbm_head_flax_to_torch_state(params, num_layers: int) -> "OrderedDict[str, np.ndarray]":
  """Standalone head params -> a ``MaskBitModelingHead`` state dict in its own key order."""
  return flax_to_torch_state(params, bar_param_mapping(), key_order=mbm_head_key_order(num_layers))


