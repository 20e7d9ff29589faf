"""``python -m maskbit_jax.convert``: released PyTorch checkpoints <-> our Orbax checkpoints.

Import (PyTorch file -> Orbax directory)::

  python -m maskbit_jax.convert --config configs/maskbit_tokenizer_12bit.py \
      --checkpoint maskbit_tokenizer_12bit.bin --out ckpt/maskbit_tokenizer_12bit

Export (Orbax directory -> PyTorch-layout state dict, ``.bin``/``.safetensors``/``.npz``)::

  python -m maskbit_jax.convert --checkpoint ckpt/maskbit_tokenizer_12bit --out tokenizer.bin

With a generator config (``model.mlm_model``) the file is taken to be the
generator; ``--kind tokenizer`` converts the tokenizer of that config instead.

Every import is verified: the params are converted back and must reproduce
every tensor of the source file exactly.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from flax import linen as nn

from maskbit_jax import checkpointing
from maskbit_jax.config import load_config, split_config_args, vq_model_config
from maskbit_jax.convert.checkpoint_files import read_state_dict, write_state_dict
from maskbit_jax.convert.param_mapping import flax_to_torch_state, torch_state_to_flax
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
from maskbit_jax.models.tokenizer import abstract_tokenizer_params, build_tokenizer_module

EXPORT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".npz")
KINDS = ("tokenizer", "generator")


def model_for(cfg, kind: str):
  """(abstract unboxed params, ParamMapping) of the ``kind`` model a config describes."""
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


def default_kind(cfg) -> str:
  return "generator" if "mlm_model" in (cfg.get("model", None) or {}) else "tokenizer"


def import_checkpoint(cfg, checkpoint: str, out: str, kind: str | None = None, overwrite: bool = False) -> str:
  """Converts a PyTorch-format file into an Orbax checkpoint directory, verifying the round trip."""
  kind = kind or default_kind(cfg)
  abstract, mapping = model_for(cfg, kind)
  state = read_state_dict(checkpoint)
  params = torch_state_to_flax(state, abstract, mapping, source=checkpoint)
  back = flax_to_torch_state(params, mapping, key_order=list(state))
  verify_round_trip(state, back, checkpoint)
  return checkpointing.save_params(
      out, params, kind=kind, config=cfg.to_dict(), overwrite=overwrite,
      meta=dict(source=os.path.abspath(checkpoint), torch_key_order=list(state)))


def import_tokenizer(cfg, checkpoint: str, out: str, overwrite: bool = False) -> str:
  return import_checkpoint(cfg, checkpoint, out, "tokenizer", overwrite)


def verify_round_trip(original, converted, source: str) -> None:
  if list(original) != list(converted):
    raise AssertionError(f"{source}: key order or set changed in the round trip")
  for key, value in original.items():
    if value.dtype != converted[key].dtype or not np.array_equal(value, converted[key]):
      raise AssertionError(f"{source}: tensor {key!r} is not reproduced exactly by the round trip")


def export_checkpoint(directory: str, out: str) -> str:
  """Writes the PyTorch-layout state dict of one of our checkpoints (released key names and order)."""
  meta = checkpointing.read_meta(directory)
  _, mapping = model_for(load_config(meta["config"]), meta["kind"])
  params = checkpointing.to_numpy(checkpointing.load_params(directory))
  state = flax_to_torch_state(params, mapping, key_order=meta.get("torch_key_order"))
  write_state_dict(out, state)
  return out


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  config, overrides, rest = split_config_args(argv)
  p = argparse.ArgumentParser(prog="python -m maskbit_jax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="source: PyTorch file, or our checkpoint dir to export")
  p.add_argument("--out", required=True, help="Orbax directory (import) or .bin/.safetensors/.npz (export)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument("--kind", choices=KINDS, help="which model of the config the file holds "
                 "(default: generator if the config has model.mlm_model, else tokenizer)")
  args = p.parse_args(rest)
  if checkpointing.is_params_checkpoint(args.checkpoint):
    if not args.out.lower().endswith(EXPORT_SUFFIXES):
      p.error(f"exporting needs --out ending in one of {EXPORT_SUFFIXES}")
    if os.path.exists(args.out) and not args.overwrite:
      p.error(f"{args.out} exists; pass --overwrite to replace it")
    export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} -> {args.out}")
    return 0
  if config is None:
    p.error("--config is required to import a PyTorch checkpoint")
  cfg = load_config(config, overrides)
  out = import_checkpoint(cfg, args.checkpoint, args.out, args.kind, overwrite=args.overwrite)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(checkpointing.load_params(out)))
  print(f"converted {args.checkpoint} -> {out} ({n:,} parameters, round trip verified)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
