"""``python -m maskbit_jax.convert``: released PyTorch checkpoints <-> our Orbax checkpoints.

Import (PyTorch file -> Orbax directory)::

  python -m maskbit_jax.convert --config configs/maskbit_tokenizer_12bit.py \\
      --checkpoint maskbit_tokenizer_12bit.bin --out ckpt/maskbit_tokenizer_12bit

Export (Orbax directory -> PyTorch-layout state dict, ``.bin``/``.safetensors``/``.npz``)::

  python -m maskbit_jax.convert --checkpoint ckpt/maskbit_tokenizer_12bit --out tokenizer.bin

The file is taken to be the config's own model (its ``model.name`` family's kind: a generator config's
generator); ``--kind tokenizer`` converts the tokenizer of a generator config instead.
BAR (``--kind bar_generator`` / ``bar_tokenizer``; the default for a ``bar_generator`` /
``bar_fsq_tokenizer`` config)::

  python -m maskbit_jax.convert --config configs/bar_b.py --checkpoint bar_b.bin --out ckpt/bar_b
  python -m maskbit_jax.convert --config configs/bar_fsq_16bits.py --checkpoint bar_fsq_16bits.bin --out ckpt/fsq16
  python -m maskbit_jax.convert --config configs/bar_b.py --kind bar_tokenizer \\
      --checkpoint bar_fsq_16bits_ft.bin --out ckpt/fsq16_ft_decoder     # decoder + out_proj only

Every import is verified: the params are converted back and must reproduce
every tensor of the source file exactly (BAR: every parameter; the RoPE tables
are checked against the config within ``ROPE_ATOL`` and regenerated on export,
the tokenizer's alias copies are folded, a decode-only import keeps the
decoder side).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from maskbit_jax import cli_errors
from maskbit_jax import checkpointing, hub, paths, registry
from maskbit_jax.config import add_config_help, load_config, split_config_args, vq_model_config
from maskbit_jax.convert.checkpoint_files import read_state_dict, write_state_dict
from maskbit_jax.checkpointing import restore_params
from maskbit_jax.convert.param_mapping import LOSSLESS_WIDENING, flax_to_torch_state, torch_state_to_flax
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
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
  from maskbit_jax.bar_config import bar_fields
  from maskbit_jax.convert import bar_mapping as bm
  from maskbit_jax.models.bar_generator import abstract_bar_params, build_bar_module

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
  from maskbit_jax.convert import bar_tokenizer_mapping as btm
  from maskbit_jax.models.bar_tokenizer import abstract_bar_tokenizer_params, bar_tokenizer_from_config

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


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  config, overrides, rest = split_config_args(argv)
  p = cli_errors.parser("python -m maskbit_jax.convert", __doc__)
  add_config_help(p, required="to import a PyTorch file; an export takes the config stored in the folder")
  p.add_argument("--checkpoint", required=True, help="source: PyTorch file, a released name (e.g. "
                 "maskbit_tokenizer_12bit: downloaded once, --config and --kind default to its own), or our "
                 "checkpoint dir to export")
  p.add_argument("--out", required=True, help="Orbax directory (import) or .bin/.safetensors/.npz (export)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument("--kind", choices=KINDS, help="which model of the config the file holds (default: generator "
                 "for model.mlm_model, bar_generator for model.generator, bar_tokenizer for model.siglip2, "
                 "else tokenizer)")
  args = p.parse_args(rest)
  released = hub.lookup(args.checkpoint)
  if released is not None:  # the release's file, and unless given its config and kind
    if released.kind not in hub.MODEL_KINDS:
      p.error(f"--checkpoint {args.checkpoint}: {released.kind} weights, not a model this command converts")
    config, args.kind = config or released.config, args.kind or released.kind
    args.checkpoint = hub.fetch(released)
  if checkpointing.is_params_checkpoint(args.checkpoint):
    if not args.out.lower().endswith(EXPORT_SUFFIXES):
      p.error(f"exporting needs --out ending in one of {EXPORT_SUFFIXES}")
    if paths.exists(args.out) and not args.overwrite:
      p.error(f"{args.out} exists; pass --overwrite to replace it")
    export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} -> {args.out}")
    return 0
  if config is None:
    p.error("--config is required to import a PyTorch checkpoint")
  cfg = load_config(hub.config_of(config) or config, overrides)
  out = import_checkpoint(cfg, args.checkpoint, args.out, args.kind, overwrite=args.overwrite)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(checkpointing.load_params(out)))
  print(f"converted {args.checkpoint} -> {out} ({n:,} parameters, round trip verified)")
  return 0


if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
