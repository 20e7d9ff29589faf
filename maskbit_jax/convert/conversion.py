"""Importing released PyTorch checkpoints into our checkpoint folders and exporting them back, verified both ways.

``import_checkpoint`` converts a file to the config's own model (or ``kind``) and checks that converting back
reproduces every tensor; ``export_checkpoint`` writes one of our folders in the released layout. The
command is ``maskbit_jax.cli.convert``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import linen as nn

from maskbit_jax import checkpointing, paths, registry
from maskbit_jax.bar_config import bar_fields
from maskbit_jax.checkpointing import restore_params
from maskbit_jax.config import load_config, vq_model_config
from maskbit_jax.convert import bar_mapping as bm, bar_tokenizer_mapping as btm
from maskbit_jax.convert.checkpoint_files import read_state_dict, write_state_dict
from maskbit_jax.convert.param_mapping import LOSSLESS_WIDENING, flax_to_torch_state, torch_state_to_flax
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
from maskbit_jax.models.bar_generator import abstract_bar_params, build_bar_module
from maskbit_jax.models.bar_tokenizer import abstract_bar_tokenizer_params, bar_tokenizer_from_config
from maskbit_jax.models.tokenizer import abstract_tokenizer_params, build_tokenizer_module

EXPORT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".npz")
KINDS = checkpointing.KINDS


def model_for(cfg, kind: str):
  """(abstract unboxed params, ParamMapping) of the MaskBit ``kind`` model a config describes."""
  if kind == "tokenizer":
    vq_cfg = vq_model_config(cfg)
    module = build_tokenizer_module(vq_cfg)
    return nn.meta.unbox(abstract_tokenizer_params(module)), tokenizer_param_mapping(vq_cfg)
  if kind == "generator":
    from maskbit_jax.convert.generator_mapping import generator_param_mapping
    from maskbit_jax.generator import generator_fields
    from maskbit_jax.models.maskbit_transformer import abstract_generator_params, build_generator_module

    module = build_generator_module(generator_fields(cfg))
    return nn.meta.unbox(abstract_generator_params(module)), generator_param_mapping(module.bits_per_split)
  raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")


@dataclasses.dataclass(frozen=True)
class Converter:
  """One model kind: PyTorch state <-> flax params, and what of a source file the round trip must reproduce."""

  to_flax: Callable[[Mapping[str, np.ndarray], str], Any]          # (state, source) -> params, strict
  to_torch: Callable[[Any, list[str] | None], "OrderedDict[str, np.ndarray]"]  # (params, key order) -> state
  reproduced: Callable[[Mapping[str, np.ndarray]], "OrderedDict[str, np.ndarray]"] = OrderedDict
  abstract: Any = None  # the model's abstract params: what one of our folders of this kind must hold
  mapping: Any = None   # its ParamMapping where it has scanned stacks (folders of the per-layer layout load too)


def _reordered(state, key_order):
  if key_order is None:
    return state
  out = OrderedDict((k, state[k]) for k in key_order if k in state)
  out.update((k, v) for k, v in state.items() if k not in out)
  return out


def _bar_generator_converter(cfg) -> Converter:
  module = build_bar_module(bar_fields(cfg))
  abstract = nn.meta.unbox(abstract_bar_params(module))
  rope = set(bm.rope_buffers(module))
  return Converter(
      to_flax=lambda state, source: bm.bar_state_to_flax(state, abstract, module, source=source),
      to_torch=lambda params, order: _reordered(bm.bar_flax_to_torch_state(params, module), order),
      # the RoPE tables are derived from the config (checked within ROPE_ATOL on import)
      reproduced=lambda state: OrderedDict((k, v) for k, v in state.items() if k not in rope), abstract=abstract,
      mapping=bm.bar_param_mapping())


def _bar_tokenizer_converter(cfg) -> Converter:
  # a tokenizer config (bar_fsq_tokenizer) converts the whole tokenizer, a BAR generator config its decoder side
  with_encoder = registry.family_of(cfg).role == registry.TOKENIZER
  module = bar_tokenizer_from_config(cfg, with_encoder=with_encoder)
  abstract = nn.meta.unbox(abstract_bar_tokenizer_params(module))

  def reproduced(state):
    canonical = btm.canonical_state(state)
    if with_encoder:
      return canonical
    return OrderedDict((k, v) for k, v in canonical.items() if k.startswith(("decoder.", "quantize.out_proj.")))

  return Converter(
      to_flax=lambda state, source: btm.bar_tokenizer_state_to_flax(state, abstract, source=source,
                                                                     skip_unbuilt_parts=not with_encoder),
      to_torch=lambda params, order: _reordered(btm.flax_to_bar_tokenizer_state(params, module), order),
      reproduced=reproduced, abstract=abstract)


def converter(cfg, kind: str) -> Converter:
  if kind == "bar_generator":
    return _bar_generator_converter(cfg)
  if kind == "bar_tokenizer":
    return _bar_tokenizer_converter(cfg)
  abstract, mapping = model_for(cfg, kind)
  return Converter(to_flax=lambda state, source: torch_state_to_flax(state, abstract, mapping, source=source),
                   to_torch=lambda params, order: flax_to_torch_state(params, mapping, key_order=order),
                   abstract=abstract, mapping=mapping)


def default_kind(cfg) -> str:
  """The kind a config's own model is stored as (its family's ``checkpoint_kind``)."""
  return registry.family_of(cfg).checkpoint_kind


def import_checkpoint(cfg, checkpoint: str, out: str, kind: str | None = None, overwrite: bool = False) -> str:
  """Converts a PyTorch-format file into an Orbax checkpoint directory, verifying the round trip."""
  kind = kind or default_kind(cfg)
  conv = converter(cfg, kind)
  state = read_state_dict(checkpoint)
  params = conv.to_flax(state, checkpoint)
  back = conv.to_torch(params, list(state))
  verify_round_trip(conv.reproduced(state), conv.reproduced(back), checkpoint)
  return checkpointing.save_params(
      out, params, kind=kind, config=cfg.to_dict(), overwrite=overwrite,
      meta=dict(source=paths.as_str(checkpoint), torch_key_order=list(state)))


def import_tokenizer(cfg, checkpoint: str, out: str, overwrite: bool = False) -> str:
  return import_checkpoint(cfg, checkpoint, out, "tokenizer", overwrite)


class RoundTripError(ValueError):
  """The converted params do not give back the source file's tensors."""


def verify_round_trip(original, converted, source: str) -> None:
  """Every tensor of ``original`` comes back exactly (a float16/bfloat16 one as its float32 widening)."""
  if list(original) != list(converted):
    raise RoundTripError(f"{source}: key order or set changed in the round trip")
  for key, value in original.items():
    value, back = np.asarray(value), np.asarray(converted[key])
    if value.dtype != back.dtype:
      if (value.dtype, back.dtype) not in LOSSLESS_WIDENING:
        raise RoundTripError(f"{source}: tensor {key!r} is {value.dtype} in the file but {back.dtype} "
                             "after conversion")
      value = value.astype(back.dtype)
    if not np.array_equal(value, back):
      raise RoundTripError(f"{source}: tensor {key!r} ({value.dtype}) is not reproduced exactly by the round trip")


def export_checkpoint(directory: str, out: str) -> str:
  """Writes the PyTorch-layout state dict of one of our checkpoints (released key names and order)."""
  meta = checkpointing.read_meta(directory)
  conv = converter(load_config(meta["config"]), meta["kind"])
  # The folder's metadata against the model its own config builds, before any array is restored.
  params = checkpointing.to_numpy(restore_params(directory, conv.abstract, conv.mapping))
  write_state_dict(out, conv.to_torch(params, meta.get("torch_key_order")))
  return out
