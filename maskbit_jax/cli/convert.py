"""``python -m maskbit_jax.convert``: released PyTorch checkpoints <-> our Orbax checkpoints.

Import (PyTorch file -> Orbax directory)::

  python -m maskbit_jax.convert --config configs/maskbit_tokenizer_12bit.py \
      --checkpoint maskbit_tokenizer_12bit.bin --out ckpt/maskbit_tokenizer_12bit

Export (Orbax directory -> PyTorch-layout state dict, ``.bin``/``.safetensors``/``.npz``)::

  python -m maskbit_jax.convert --checkpoint ckpt/maskbit_tokenizer_12bit --out tokenizer.bin

The file is taken to be the config's own model (its ``model.name`` family's kind: a generator config's
generator); ``--kind tokenizer`` converts the tokenizer of a generator config instead.
BAR (``--kind bar_generator`` / ``bar_tokenizer``; the default for a ``bar_generator`` /
``bar_fsq_tokenizer`` config)::

  python -m maskbit_jax.convert --config configs/bar_b.py --checkpoint bar_b.bin --out ckpt/bar_b
  python -m maskbit_jax.convert --config configs/bar_fsq_16bits.py --checkpoint bar_fsq_16bits.bin --out ckpt/fsq16
  python -m maskbit_jax.convert --config configs/bar_b.py --kind bar_tokenizer \
      --checkpoint bar_fsq_16bits_ft.bin --out ckpt/fsq16_ft_decoder     # decoder + out_proj only

Every import is verified: the params are converted back and must reproduce
every tensor of the source file exactly (BAR: every parameter; the RoPE tables
are checked against the config within ``ROPE_ATOL`` and regenerated on export,
the tokenizer's alias copies are folded, a decode-only import keeps the
decoder side).
"""

from __future__ import annotations
import sys
import jax
import numpy as np
from maskbit_jax import cli_errors
from maskbit_jax import checkpointing, hub, paths
from maskbit_jax.config import add_config_help, load_config, split_config_args
from maskbit_jax.convert.conversion import EXPORT_SUFFIXES, KINDS, export_checkpoint, import_checkpoint


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
