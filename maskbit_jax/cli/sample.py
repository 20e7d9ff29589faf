"""The sampling command, ``python -m maskbit_jax.sample`` (the library function is ``maskbit_jax.sample``).

  python -m maskbit_jax.sample --config configs/maskbit_generator_12bit.py \\
      --tokenizer maskbit_tokenizer_12bit.bin --generator maskbit_generator_12bit.bin \\
      --classes 1,207,360 --num_steps 64 --seed 0 --out out/samples
  python -m maskbit_jax.sample --config configs/generator_tiny.py --random_init --classes 1,2,3 --out out/tiny
  python -m maskbit_jax.sample --config configs/bar_b.py --tokenizer bar_fsq_16bits_ft.bin \\
      --generator bar_b.bin --classes 1,207,360 --out out/bar_b

The config's ``model.name`` picks the family (``maskbit_jax.registry``): MaskBit generators run all MaskGIT
steps, recombining the splits and decoding as one compiled function; BAR generators raster-order AR steps with
a KV cache and the MBM head, decoded by the BAR-FSQ decoder or, for BAR on MaskBit bits, the LFQ tokenizer. The batch is split over every local device. Writes
one PNG per image, a labelled grid and ``tokens.npz`` (plus ``bits`` for BAR).
In a multi-process job (``maskbit_jax.distributed``: TPU slices, SLURM, Open
MPI or ``--coordinator_address/--num_processes/--process_id``) the processes
share the batches and process 0 writes the one folder; the images are those of
one process.
"""


from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time

import jax
import numpy as np

from maskbit_jax import cli_errors, paths, registry
from maskbit_jax.sampling import api as sampling_api

# every sampler flag the sampling commands take; each family takes those of its registry.sampling_keys
SAMPLING_FLAGS = ("num_steps", "guidance_scale", "guidance_annealing", "scale_pow", "softmax_temperature",
                  "use_sampling_annealing", "randomize_temperature", "mask_schedule_strategy", "tokens_allocation")


def add_sampling_flags(p) -> None:
  """The sampler settings a command takes (``sample``, ``edit``): each overrides the config's when given."""
  for name in ("num_steps", "guidance_scale", "scale_pow", "softmax_temperature", "randomize_temperature"):
    p.add_argument(f"--{name}", type=int if name == "num_steps" else float)
  p.add_argument("--guidance_annealing", choices=("none", "linear", "cosine"))
  p.add_argument("--mask_schedule_strategy", choices=("linear", "square", "cosine", "arccos", "root"))
  p.add_argument("--use_sampling_annealing", choices=("true", "false"))
  p.add_argument("--tokens_allocation", help="BAR: bits revealed per MBM step, comma-separated (e.g. 2,2,5,7)")


def check_sampling_flags(p, args) -> None:
  """Refuses non-finite numbers (argparse's float() takes "nan" and "inf") and parses ``--tokens_allocation``."""
  for flag in ("guidance_scale", "scale_pow", "softmax_temperature", "randomize_temperature"):
    value = getattr(args, flag)
    if value is not None and not math.isfinite(value):
      p.error(f"--{flag} {value}: must be a finite number")
  if args.tokens_allocation is not None:
    try:
      args.tokens_allocation = tuple(int(t) for t in args.tokens_allocation.split(",") if t.strip())
    except ValueError:
      p.error(f"--tokens_allocation must be comma-separated integers, got {args.tokens_allocation!r}")


def resolve_model_args(p, config, args):
  """The config and weights a sampling command names: ``--config``, else the one stored with ``--generator``
  (our export) or a released name's; ``--tokenizer`` / ``--generator`` through the registry (``--download``)."""
  from maskbit_jax import checkpointing, hub

  if config is None:
    config = checkpointing.stored_config(args.generator) or hub.config_of(args.generator)
    if config is None:
      p.error("--config is required, unless --generator is one of our exports (its stored config is used) "
              "or a released name")
  if args.random_init and (args.tokenizer or args.generator or args.download):
    p.error("--random_init excludes --tokenizer/--generator/--download")
  args.tokenizer = hub.cli_checkpoint(args.tokenizer, config, "tokenizer", args.download)
  args.generator = hub.cli_checkpoint(args.generator, config, "generator", args.download)
  return config


def _parse(argv):
  from maskbit_jax import hub
  from maskbit_jax.config import add_config_help, split_config_args

  config, overrides, rest = split_config_args(argv)
  p = cli_errors.parser("python -m maskbit_jax.sample", __doc__)
  add_config_help(p, required="default: the config stored with --generator when that is one of our exports")
  p.add_argument("--tokenizer", help="tokenizer checkpoint or released name (default: experiment.vqgan_checkpoint; "
                 "BAR-FSQ: experiment.tokenizer_checkpoint)")
  p.add_argument("--generator", help="generator checkpoint or released name, e.g. maskbit_generator_12bit "
                 "(default: experiment.generator_checkpoint)")
  p.add_argument("--random_init", action="store_true", help="untrained weights for both (smoke test)")
  hub.add_download_flag(p)
  p.add_argument("--classes", required=True, help="comma-separated class ids, e.g. 1,207,360")
  p.add_argument("--samples_per_class", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=32, help="images per compiled call")
  p.add_argument("--out", required=True)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  add_sampling_flags(p)
  from maskbit_jax import distributed

  distributed.add_distributed_args(p)
  args = p.parse_args(rest)
  config = resolve_model_args(p, config, args)
  try:
    args.class_ids = [int(c) for c in args.classes.split(",") if c.strip()]
  except ValueError:
    p.error(f"--classes must be comma-separated integers, got {args.classes!r}")
  if not args.class_ids:
    p.error("--classes names no class id")
  for flag in ("samples_per_class", "batch_size"):
    if getattr(args, flag) < 1:
      p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
  check_sampling_flags(p, args)
  from maskbit_jax.image_io import check_output_path

  try:  # here, not after all the sampling
    check_output_path(args.out, folder=True)
  except ValueError as e:
    p.error(f"--out: {e}")
  return config, overrides, args


def _replicated(model):
  """``model`` with its params on every local device once (not sent again with every batch; checkpoints
  restored onto one device would otherwise clash with the batch spread over all of them)."""
  from maskbit_jax import sharding

  rep = sharding.replicated(sharding.create_mesh({"data": -1}, jax.local_devices()))
  return dataclasses.replace(model, params=jax.device_put(model.params, rep))


def sampling_overrides(fam, args) -> dict:
  """The sampler flags given on the command line, for the generator family ``fam``: a flag of a setting the
  family does not take is a one-line error naming the ones it does."""
  foreign = [k for k in SAMPLING_FLAGS if k not in fam.sampling_keys and getattr(args, k) is not None]
  if foreign:
    takes = ", ".join("--" + k for k in fam.sampling_keys)
    raise ValueError(f"{', '.join('--' + k for k in foreign)}: not settings of a {fam.name} config; it takes {takes}")
  settings = {k: getattr(args, k) for k in fam.sampling_keys if hasattr(args, k)}
  if settings.get("use_sampling_annealing") is not None:
    settings["use_sampling_annealing"] = settings["use_sampling_annealing"] == "true"
  return settings


def load_models(cfg, args, **tokenizer_options):
  """(generator, tokenizer, sampler overrides) of a generator config, each by its family's loader."""
  fam = registry.family_of(cfg)
  if fam.role != registry.GENERATOR:
    raise ValueError(f"the config's model is a {fam.role} ({fam.name}); sampling needs a generator config")
  settings = sampling_overrides(fam, args)
  tok = registry.tokenizer_family_of(cfg).get("loader")(cfg, args.tokenizer, random_init=args.random_init,
                                                        seed=args.seed, dtype=args.dtype, **tokenizer_options)
  gen = fam.get("loader")(cfg, args.generator, random_init=args.random_init, seed=args.seed + 1, dtype=args.dtype)
  return gen, tok, settings


def main(argv=None) -> int:
  config, overrides, args = _parse(sys.argv[1:] if argv is None else argv)
  from maskbit_jax import distributed, hub, image_io
  from maskbit_jax.data.sample_images import class_caption
  from maskbit_jax.config import load_config

  # as train and evaluate: nothing on one host; TPU slices, SLURM, Open MPI or the flags join the job
  plan = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                timeout_s=args.distributed_timeout_s)
  if plan.is_distributed:  # [pI/N] log lines; one process leaves the caller's logging alone
    distributed.setup_logging()

  cfg = load_config(hub.config_of(config) or config, overrides)
  gen, tok, settings = load_models(cfg, args)
  resolved = sampling_api.resolve_settings(gen, settings)
  gen, tok = _replicated(gen), _replicated(tok)
  if args.random_init:
    print("NOTE: random (untrained) weights; the images are not meaningful.")
  gen.check_labels(args.class_ids)  # the Python ints, before numpy (2**64 would overflow int64)
  labels = np.repeat(np.asarray(args.class_ids, np.int64), args.samples_per_class)

  key = jax.random.key(args.seed)
  outs = []
  start = time.perf_counter()
  rows = min(args.batch_size, len(labels))
  num_batches = -(-len(labels) // rows)
  # batch i is sampled as it is (key fold_in(key, i)) whichever process runs it, so the images do not depend
  # on the process count; a short last batch is padded after sampling, only for the gather
  for i in distributed.process_batch_ids(num_batches, jax.process_index(), jax.process_count()):
    chunk = labels[i * rows:(i + 1) * rows] if i < num_batches else labels[:rows]  # past the end: padding
    out = sampling_api.sample_sharded(gen, tok, chunk, jax.random.fold_in(key, i), **settings)
    outs.append({k: np.concatenate([v, np.repeat(v[-1:], rows - len(v), axis=0)]) for k, v in out.items()})
  arrays = distributed.gather_batches(outs, len(labels))  # every process's batches, in order
  seconds = time.perf_counter() - start
  images = arrays.pop("images")
  if jax.process_index() != 0:  # process 0 writes the one folder
    return 0

  paths.makedirs(args.out)
  for i, (label, image) in enumerate(zip(labels, images)):
    image_io.save_png(paths.join(args.out, f"{i:05d}_class{label}.png"), image)
  ncols = min(len(labels), 8)
  source = (cfg.get("dataset", None) or {}).get("source", "")  # the classes' names, where the data has them
  image_io.save_labelled_grid(paths.join(args.out, "grid.png"), images,
                              [class_caption(c, source) for c in labels], ncols)
  buffer = io.BytesIO()  # one upload on an object store (np.savez seeks in what it writes)
  np.savez(buffer, labels=labels, **arrays)
  paths.write_bytes_atomic(paths.join(args.out, "tokens.npz"), buffer.getvalue())
  summary = dict(images=len(labels), seconds=round(seconds, 3), images_per_s=round(len(labels) / seconds, 4),
                 devices=jax.device_count(), processes=jax.process_count(), random_init=bool(args.random_init),
                 settings=resolved)
  paths.write_text_atomic(paths.join(args.out, "summary.json"), json.dumps(summary, indent=1))
  print(json.dumps(summary))
  print(f"wrote {len(labels)} images and {paths.join(args.out, 'grid.png')}")
  return 0



if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
