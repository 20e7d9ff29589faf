"""Class-conditional sampling: ``maskbit_jax.sample(...)`` and ``python -m maskbit_jax.sample``.

  python -m maskbit_jax.sample --config configs/maskbit_generator_12bit.py \\
      --tokenizer maskbit_tokenizer_12bit.bin --generator maskbit_generator_12bit.bin \\
      --classes 1,207,360 --num_steps 64 --seed 0 --out out/samples
  python -m maskbit_jax.sample --config configs/generator_tiny.py --random_init --classes 1,2,3 --out out/tiny
  python -m maskbit_jax.sample --config configs/bar_b.py --tokenizer bar_fsq_16bits_ft.bin \\
      --generator bar_b.bin --classes 1,207,360 --out out/bar_b

MaskBit configs (``model.mlm_model``): generation (all MaskGIT steps,
recombining the splits, decoding) is one compiled function. BAR configs
(``model.generator``): raster-order AR steps with a KV cache and the MBM head
(``maskbit_jax.bar``), decoded by the BAR-FSQ decoder or, for BAR on MaskBit
bits, the LFQ tokenizer. The batch is split over every local device. Writes
one PNG per image, a labelled grid and ``tokens.npz`` (plus ``bits`` for BAR).
In a multi-process job (``maskbit_jax.distributed``: TPU slices, SLURM, Open
MPI or ``--coordinator_address/--num_processes/--process_id``) the processes
share the batches and process 0 writes the one folder; the images are those of
one process.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax import cli_errors, paths
from maskbit_jax.generator import Generator
from maskbit_jax.sampling.factorization import combine_tokens
from maskbit_jax.sampling.maskgit_sampler import SamplerConfig, sample_tokens
from maskbit_jax.tokenizer import Tokenizer

SAMPLER_ARGS = ("num_steps", "guidance_scale", "guidance_annealing", "scale_pow", "softmax_temperature",
                "use_sampling_annealing", "randomize_temperature", "mask_schedule_strategy")


def check_pair(gen: Generator, tok: Tokenizer) -> None:
  """The generator must run on this tokenizer's bit width and latent grid."""
  if not tok.is_lookup_free:
    raise ValueError("MaskBit generators need a lookup-free (bit) tokenizer")
  if gen.token_bits != tok.token_bits:
    raise ValueError(f"the generator predicts {gen.token_bits}-bit tokens but the tokenizer has "
                     f"{tok.token_bits} bits: pair checkpoints of the same bit width")
  grid = gen.module.img_size // tok.latent_stride
  if grid * grid != gen.seq_len:
    raise ValueError(f"generator sequence length {gen.seq_len} does not match the tokenizer's "
                     f"{grid}x{grid} latent grid at {gen.module.img_size} px")


def resolve_settings(gen: Generator, overrides: dict) -> dict:
  settings = dict(gen.sampling_defaults)
  settings.update({k: v for k, v in overrides.items() if v is not None})
  unknown = set(settings) - set(SAMPLER_ARGS)
  if unknown:
    raise TypeError(f"unknown sampling settings {sorted(unknown)}; known: {SAMPLER_ARGS}")
  settings.setdefault("num_steps", 64)
  # the sampler's own checks (finite scales and temperatures, known schedules), here before any sampling
  SamplerConfig(num_positions=gen.seq_len, codebook_splits=gen.codebook_splits, mask_token=gen.mask_token,
                **settings)
  return settings


@functools.partial(jax.jit, static_argnames=("gen_module", "tok_module", "settings", "decode", "return_trace"))
def _generate(gen_params, tok_params, labels, key, cat_noise, conf_noise, *, gen_module, tok_module,
              settings, decode, return_trace):
  def logits_fn(tokens, labels, drop, step):
    del step
    return gen_module.apply({"params": gen_params}, tokens, labels, drop)

  out = sample_tokens(logits_fn, labels, key, num_positions=gen_module.seq_len,
                      codebook_splits=gen_module.codebook_splits, mask_token=gen_module.mask_token,
                      cat_gumbel_noise=cat_noise, conf_gumbel_noise=conf_noise, return_trace=return_trace,
                      **dict(settings))
  split_tokens, trace = out if return_trace else (out, None)
  side = int(round(gen_module.seq_len ** 0.5))
  tokens = combine_tokens(split_tokens, gen_module.token_size).reshape(labels.shape[0], side, side)
  images = tok_module.apply({"params": tok_params}, tokens, method="decode_tokens") if decode else None
  return tokens, images, trace


def _check_call(gen, tok, key) -> None:
  """The arguments' kinds, named: the generator first, then its tokenizer, and a PRNG key (not a seed)."""
  from maskbit_jax import bar

  if not isinstance(gen, (Generator, bar.BarModel)):
    hint = " (the generator comes first, then the tokenizer)" if isinstance(tok, (Generator, bar.BarModel)) else ""
    raise TypeError(f"gen must be a generator from load_generator / load_bar_generator, got "
                    f"{type(gen).__name__}{hint}")
  if isinstance(key, (int, np.integer)):
    raise TypeError(f"key must be a PRNG key such as jax.random.key({key}), got the int {key}")


def sample(gen: Generator, tok: Tokenizer, labels, key: jax.Array, *, decode: bool = True,
           cat_gumbel_noise=None, conf_gumbel_noise=None, return_trace: bool = False, **settings):
  """Samples class-conditional images.

  A BAR generator (``maskbit_jax.bar.BarModel``) is served by
  ``maskbit_jax.bar.sample`` (settings ``guidance_scale``,
  ``randomize_temperature``, ``tokens_allocation``; its result also holds ``bits``).

  Args:
    gen, tok: a MaskBit generator and the tokenizer of the same bit width.
    labels: int class ids ``[B]`` in ``[0, nclass)``.
    key: PRNG key; the same key gives the same images.
    **settings: ``num_steps``, ``guidance_scale``, ``guidance_annealing``
      (none/linear/cosine), ``scale_pow``, ``softmax_temperature``,
      ``use_sampling_annealing``, ``randomize_temperature``,
      ``mask_schedule_strategy`` (linear/square/cosine/arccos/root). Defaults: the
      released evaluation settings in the generator's config.
    cat_gumbel_noise, conf_gumbel_noise: replay stored noise instead of drawing
      (``[S, B, N, M, C]`` and ``[S, B, N, M]``).
  Returns:
    dict with ``tokens`` int32 ``[B, h, w]``, ``images`` float32 ``[B, H, W, 3]``
    (decoded, not clamped; absent with ``decode=False``) and, with
    ``return_trace``, ``trace`` (per-step sampler arrays).
  """
  from maskbit_jax import bar

  _check_call(gen, tok, key)
  if isinstance(gen, bar.BarModel):
    if cat_gumbel_noise is not None or conf_gumbel_noise is not None:
      raise TypeError("cat_gumbel_noise / conf_gumbel_noise are MaskGIT draws; BAR replays noise={'u_sample', "
                      "'u_conf'} (maskbit_jax.bar.sample)")
    return bar.sample(gen, tok, labels, key, decode=decode, return_trace=return_trace, **settings)
  check_pair(gen, tok)
  labels = gen.check_labels(labels)
  settings = resolve_settings(gen, settings)
  frozen = tuple(sorted(settings.items()))
  tokens, images, trace = _generate(gen.params, tok.params, labels, key, cat_gumbel_noise, conf_gumbel_noise,
                                    gen_module=gen.module, tok_module=tok.module, settings=frozen,
                                    decode=decode, return_trace=return_trace)
  out = dict(tokens=tokens)
  if decode:
    out["images"] = images
  if return_trace:
    out["trace"] = trace
  return out


def sample_sharded(gen, tok, labels, key: jax.Array, **settings) -> dict:
  """``sample`` (MaskBit or BAR) with the batch split over every local device (padded to a multiple of the
  device count)."""
  from maskbit_jax import sharding

  labels = np.asarray(labels)
  n_dev = jax.local_device_count()
  pad = (-len(labels)) % n_dev
  padded = np.concatenate([labels, np.repeat(labels[-1:], pad)]) if pad else labels
  mesh = sharding.create_mesh({"data": -1}, jax.local_devices())
  placed = jax.device_put(jnp.asarray(padded, jnp.int32), sharding.batch_sharding(mesh, 1))
  out = sample(gen, tok, placed, key, **settings)
  return {k: np.asarray(v)[: len(labels)] for k, v in out.items()}


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


def _maskbit_models(cfg, args):
  """(generator, tokenizer, sampler overrides, resolved settings) of a MaskBit config."""
  from maskbit_jax.generator import load_generator
  from maskbit_jax.tokenizer import load_tokenizer

  if args.tokens_allocation is not None:
    raise ValueError("--tokens_allocation is a BAR setting; this is a MaskBit generator config")
  tok = load_tokenizer(cfg, args.tokenizer, random_init=args.random_init, seed=args.seed, dtype=args.dtype)
  gen = load_generator(cfg, args.generator, random_init=args.random_init, seed=args.seed + 1, dtype=args.dtype)
  settings = {k: getattr(args, k) for k in SAMPLER_ARGS}
  if settings["use_sampling_annealing"] is not None:
    settings["use_sampling_annealing"] = settings["use_sampling_annealing"] == "true"
  return gen, tok, settings, resolve_settings(gen, settings)


def _bar_models(cfg, args):
  """(generator, tokenizer, sampler overrides, resolved settings) of a BAR config."""
  from maskbit_jax import bar

  maskbit_only = [k for k in SAMPLER_ARGS if k not in bar.SAMPLING_KEYS and getattr(args, k) is not None]
  if maskbit_only:
    raise ValueError(f"{', '.join('--' + k for k in maskbit_only)}: MaskBit settings; a BAR config takes "
                     f"{', '.join('--' + k for k in bar.SAMPLING_KEYS)}")
  tok = bar.load_bar_tokenizer(cfg, args.tokenizer, random_init=args.random_init, seed=args.seed, dtype=args.dtype)
  gen = bar.load_bar_generator(cfg, args.generator, random_init=args.random_init, seed=args.seed + 1,
                               dtype=args.dtype)
  settings = {k: getattr(args, k) for k in bar.SAMPLING_KEYS}
  return gen, tok, settings, bar.resolve_settings(gen, settings)


def main(argv=None) -> int:
  config, overrides, args = _parse(sys.argv[1:] if argv is None else argv)
  from maskbit_jax import bar, distributed, hub, image_io
  from maskbit_jax.data.sample_images import class_caption
  from maskbit_jax.config import load_config

  # as train and evaluate: nothing on one host; TPU slices, SLURM, Open MPI or the flags join the job
  plan = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                timeout_s=args.distributed_timeout_s)
  if plan.is_distributed:  # [pI/N] log lines; one process leaves the caller's logging alone
    distributed.setup_logging()

  cfg = load_config(hub.config_of(config) or config, overrides)
  gen, tok, settings, resolved = (_bar_models if bar.is_bar_config(cfg) else _maskbit_models)(cfg, args)
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
    out = sample_sharded(gen, tok, chunk, jax.random.fold_in(key, i), **settings)
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


class _CallableModule(types.ModuleType):
  """``maskbit_jax.sample`` is both this CLI module and the ``sample`` function.

  Importing the submodule rebinds the package attribute to the module; making
  the module callable keeps ``maskbit_jax.sample(gen, tok, ...)`` working then.
  """

  def __call__(self, *args, **kwargs):
    return sample(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
