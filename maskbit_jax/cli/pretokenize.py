"""Tokenize a dataset once: ``python -m maskbit_jax.pretokenize``.

  python -m maskbit_jax.pretokenize --config configs/maskbit_tokenizer_12bit.py \
      --checkpoint maskbit_tokenizer_12bit.bin --data tfds:imagenet2012:train --out data/in256_tok12

  python -m maskbit_jax.pretokenize --config configs/bar_b.py --checkpoint bar_fsq_16bits.bin \
      --data tfds:imagenet2012:train --out data/in256_bar16

Writes ArrayRecord shards ``tokens-SSSSS-of-NNNNN.array_record`` of ``--shard_size`` records each
(the same files whatever the process count; :mod:`maskbit_jax.shard_plan`) whose records hold, per image,
the tokens of the image and of its horizontal flip, the label and the image index (msgpack via
``flax.serialization``), plus ``meta.json`` listing every shard, written by process 0 once all exist.

Images are decoded and resized in grain threads while the devices encode the batch before; the processes
of a distributed job (joined as ``train`` does) split the shards. A rerun with the same arguments resumes:
finished shards (each with a ``.done`` marker) are skipped, a partial one is written again; other
arguments are refused by name (``--overwrite`` replaces the set). ``--out`` may be a bucket (``gs://...``).

The image is the reference's evaluation crop (or ADM's, ``--crop adm``); with ``--crops K`` (K > 1) each
image gives K records instead, K ``RandomResizedCrop`` s of the config's training recipe (and their
flips), record ``i * K + c`` holding crop ``c`` (``"crop"``) of image ``i``, so a shuffled pass over the
set sees every crop once (docs/training.md, "Pretokenized sets"). A MaskBit tokenizer (or a BAR config on
MaskBit's LFQ tokens) writes int32 ``tokens`` / ``tokens_flipped`` ``[h, w]``; a BAR config on BAR's
binary-FSQ tokenizer writes its bits, uint8 ``bits`` / ``bits_flipped`` ``[h*w, K]``, never packed, as the
reference stores them (its encoder sees images in [-1, 1]). ``TokenDataset`` reads them back as a grain
random-access source. Tokens equal what the tokenizer's encoder gives on the fly.
"""

from __future__ import annotations
import os
import sys
import jax
from maskbit_jax import cli_errors, paths, registry
from maskbit_jax.data.pretokenize import DEFAULT_SHARD_SIZE, pretokenize


def main(argv=None) -> int:
  from maskbit_jax import distributed, hub
  from maskbit_jax.config import add_config_help, load_config, split_config_args
  from maskbit_jax.data import sources

  config, overrides, rest = split_config_args(sys.argv[1:] if argv is None else argv)
  p = cli_errors.parser("python -m maskbit_jax.pretokenize", __doc__)
  add_config_help(p)
  p.add_argument("--checkpoint", help="the tokenizer: a PyTorch file, converted checkpoint dir or released name")
  p.add_argument("--random_init", action="store_true")
  hub.add_download_flag(p)
  p.add_argument("--data", required=True, help="photos | synthetic:N | tfds:NAME:SPLIT[:DIR] | image folder")
  p.add_argument("--size", type=int, default=None)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--num_images", type=int, default=None)
  p.add_argument("--out", required=True)
  p.add_argument("--overwrite", action="store_true",
                 help="replace a set made with other arguments (a rerun with the same ones resumes it)")
  p.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_SIZE,
                 help="records per ArrayRecord shard, the unit a rerun resumes by (default %(default)s)")
  p.add_argument("--num_threads", type=int, default=min(8, os.cpu_count() or 1),
                 help="grain threads decoding and resizing images (default: the cores, at most 8)")
  p.add_argument("--prefetch", type=int, default=64, help="images decoded ahead of the encoder")
  p.add_argument("--crops", type=int, default=1,
                 help="K > 1: K random-resized crops per image (the config's dataset.preprocessing recipe: "
                      "min_scale, use_aspect_ratio_aug, interpolation) and their flips, for a training split; "
                      "1 (default): one evaluation crop and its flip")
  p.add_argument("--seed", type=int, default=0, help="seed of the --crops draws")
  p.add_argument("--crop", choices=("center", "adm"), default=None,
                 help="the reference's evaluation crop (shorter side resized with the config's interpolation, "
                      "then the centre), or ADM's box-halving crop (default: adm for BAR's binary-FSQ tokenizer, as "
                      "its reference pretokenizes; center otherwise)")
  distributed.add_distributed_args(p)
  args = p.parse_args(rest)
  if config is None:
    p.error("--config is required")
  if args.random_init and args.download:
    p.error("--random_init excludes --download")
  args.checkpoint = hub.cli_checkpoint(args.checkpoint, config, "tokenizer", args.download)
  if args.crops < 1:
    p.error(f"--crops must be >= 1, got {args.crops}")
  if args.crops > 1 and args.crop is not None:
    p.error(f"--crop {args.crop} makes one crop per image; --crops {args.crops} draws random-resized crops")
  if args.seed < 0:
    p.error(f"--seed must be >= 0, got {args.seed}")
  for flag in ("shard_size", "batch_size"):
    if getattr(args, flag) < 1:
      p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
  # as train, evaluate and sample: nothing on one host; TPU slices, SLURM, Open MPI or the flags join the job
  plan = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                timeout_s=args.distributed_timeout_s)
  if plan.is_distributed:
    distributed.setup_logging()
  cfg = load_config(hub.config_of(config) or config, overrides)
  # a released name as the file it stands for, so the set records (and resumes on) that file
  tok_family = registry.tokenizer_family_of(cfg)  # a generator config: the tokenizer its tokens come from
  args.checkpoint = hub.resolve_checkpoint(args.checkpoint, tok_family.checkpoint_kind)
  pre = cfg.get("dataset", {}).get("preprocessing", {})
  if args.crops > 1 and "min_scale" not in pre:
    p.error(f"--crops {args.crops}: this config's dataset.preprocessing has no RandomResizedCrop recipe "
            "(min_scale, use_aspect_ratio_aug, interpolation; BAR's trains on one ADM crop per image)")
  # BAR's released configs name the image size crop_size
  size = args.size or int(pre.get("resolution", pre.get("crop_size", 256)))
  bar_fsq = tok_family.bits == "bar_fsq"  # BAR's binary FSQ: loaded with its encoder, ADM crops
  tok = tok_family.get("loader")(cfg, args.checkpoint, random_init=args.random_init,
                                 **(dict(with_encoder=True) if bar_fsq else {}))
  if tok.image_size is not None and size != tok.image_size:
    raise ValueError(f"--size {size}: this BAR tokenizer encodes {tok.image_size} px images")
  # "center": the reference's eval_transform (Resize of the shorter side with the config's interpolation,
  # CenterCrop), as for an evaluation split
  source = sources.make_source(args.data, size, interpolation=sources.eval_interpolation(cfg))
  if args.crops > 1:
    crop = "random_resized"
    try:
      source = sources.RandomResizedCropsSource(source, size, args.crops, dict(pre), seed=args.seed)
    except ValueError as e:
      p.error(f"--crops {args.crops}: {e}")
  else:
    crop = args.crop or ("adm" if bar_fsq else "center")
  if crop == "adm":
    source = sources.AdmCropSource(source, size)
  # what decides the records, beyond the config and sizes pretokenize adds; the batch and threads do not
  identity = {"--data": args.data, "--size": size,
              "--checkpoint": None if args.checkpoint is None else paths.as_str(args.checkpoint),
              "--random_init": bool(args.random_init)}
  meta = pretokenize(tok, source, paths.as_str(args.out), batch_size=args.batch_size, num_images=args.num_images,
                     overwrite=args.overwrite, crop=crop, shard_size=args.shard_size, plan=identity,
                     num_threads=args.num_threads, prefetch=args.prefetch)
  if jax.process_index() == 0:
    crops = f" x {meta['crops']} crops" if meta["crops"] > 1 else ""
    rate = f", {meta['images_per_s']:.1f} images/s" if meta["images_per_s"] else ""
    print(f"wrote {meta['num_images']} images'{crops} tokens ({meta['token_grid']} grid) to {args.out}: "
          f"{meta['new_shards']} of {len(meta['shards'])} shards written now{rate}")
  return 0


if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
