"""Tokenize and reconstruct images with a tokenizer: ``python -m maskbit_jax.reconstruct``.

  python -m maskbit_jax.reconstruct --config configs/maskbit_tokenizer_12bit.py \\
      --checkpoint maskbit_tokenizer_12bit.bin --out out/recon
  python -m maskbit_jax.reconstruct --config configs/tokenizer_tiny.py --random_init --out out/recon
  python -m maskbit_jax.reconstruct --checkpoint runs/tok/export/tokenizer --out out/recon   # its stored config

Without ``--images``: the held-out images of the synthetic set when the config trained on it (the
tiny run), else the embedded sample photos. Writes
``reconstructions.png`` (originals above, reconstructions below),
``tokens.npz`` and prints PSNR and codebook usage. In a multi-process job (``maskbit_jax.distributed``)
the processes share the batches and process 0 writes the one folder.
"""

from __future__ import annotations

import io
import json
import sys
import time

import numpy as np

from maskbit_jax import cli_errors, paths


def _parse(argv):
  from maskbit_jax import hub
  from maskbit_jax.config import add_config_help, split_config_args

  config, overrides, rest = split_config_args(argv)
  p = cli_errors.parser("python -m maskbit_jax.reconstruct", __doc__)
  add_config_help(p, required="default: the config stored with --checkpoint when that is one of our exports")
  p.add_argument("--checkpoint", help="PyTorch file (.bin/.ckpt/.safetensors/_state.npz), converted checkpoint dir "
                 "or released name (e.g. maskbit_tokenizer_12bit)")
  p.add_argument("--random_init", action="store_true", help="untrained weights (smoke test); never implicit")
  hub.add_download_flag(p)
  p.add_argument("--images", help="a folder of images, photos, synthetic:N[:SEED] or tfds:NAME:SPLIT (default: "
                 "held-out synthetic images for a config trained on synthetic:N, else photos)")
  p.add_argument("--num_images", type=int, default=8, help="images taken from a data source (default: 8)")
  p.add_argument("--size", type=int, default=None, help="image side (default: dataset.preprocessing.resolution)")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="output folder")
  from maskbit_jax import distributed

  distributed.add_distributed_args(p)
  args = p.parse_args(rest)
  if config is None:
    from maskbit_jax import checkpointing

    config = checkpointing.stored_config(args.checkpoint) or hub.config_of(args.checkpoint)
    if config is None:
      p.error("--config is required, unless --checkpoint is one of our exports (its stored config is used) "
              "or a released name")
  if args.random_init and args.download:
    p.error("--random_init excludes --download")
  args.checkpoint = hub.cli_checkpoint(args.checkpoint, config, "tokenizer", args.download)
  for flag in ("batch_size", "num_images"):
    if getattr(args, flag) < 1:
      p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
  from maskbit_jax.image_io import check_output_path

  try:
    check_output_path(args.out, folder=True)
  except ValueError as e:
    p.error(f"--out: {e}")
  return config, overrides, args


HELD_OUT_SEED = 10_000  # a seed of the synthetic set that no training config uses


def _images(spec: str | None, cfg, size: int, num: int) -> tuple[np.ndarray, list[str]]:
  """``[N, size, size, 3]`` float images in [0, 1] and their names, from ``--images`` or the default."""
  from maskbit_jax import image_io
  from maskbit_jax.data.sample_images import class_caption, sample_photos
  from maskbit_jax.data.sources import eval_interpolation, make_source

  if spec is None:
    trained_on = str(cfg.get("dataset", {}).get("source", ""))
    if not trained_on.startswith("synthetic:"):
      return sample_photos(size)
    spec = f"synthetic:{num}:{HELD_OUT_SEED}"  # held out: the run trained on other draws of the same set
    print(f"images: {num} held-out images of the synthetic set the model was trained on ({spec})")
  if paths.isdir(spec):
    return image_io.load_image_folder(spec, size)
  source = make_source(spec, size, interpolation=eval_interpolation(cfg))
  count = min(num, len(source))
  items = [source[i] for i in range(count)]
  images = np.stack([np.asarray(it["image"]) for it in items])
  images = images / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
  names = [class_caption(int(it["label"]), spec) for it in items]  # as the sample grids caption theirs
  return images, names


def main(argv=None) -> int:
  config, overrides, args = _parse(sys.argv[1:] if argv is None else argv)
  import jax

  from maskbit_jax import distributed, hub, image_io
  from maskbit_jax.config import load_config, vq_model_config
  from maskbit_jax.models.tokenizer import latent_stride_of
  from maskbit_jax.tokenizer import check_image_side, load_tokenizer

  if args.random_init and args.checkpoint:
    raise SystemExit("--random_init and --checkpoint exclude each other")
  # as train and evaluate: nothing on one host; TPU slices, SLURM, Open MPI or the flags join the job
  plan = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                timeout_s=args.distributed_timeout_s)
  if plan.is_distributed:  # [pI/N] log lines; one process leaves the caller's logging alone
    distributed.setup_logging()
  cfg = load_config(hub.config_of(config) or config, overrides)
  size = args.size if args.size is not None else int(
      cfg.get("dataset", {}).get("preprocessing", {}).get("resolution", 256))
  # the size and the images before the weights: a bad size or file fails before a large checkpoint loads
  check_image_side(size, latent_stride_of(vq_model_config(cfg)),
                   "dataset.preprocessing.resolution" if args.size is None else "--size")
  images, names = _images(args.images, cfg, size, args.num_images)
  tok = load_tokenizer(cfg, args.checkpoint, random_init=args.random_init, seed=args.seed)
  if args.random_init:
    print("NOTE: random (untrained) tokenizer weights; reconstructions are not meaningful.")

  outs = []
  start = time.perf_counter()
  rows = min(args.batch_size, len(images))
  num_batches = -(-len(images) // rows)
  for i in distributed.process_batch_ids(num_batches, jax.process_index(), jax.process_count()):
    batch = images[i * rows:(i + 1) * rows] if i < num_batches else images[:rows]  # past the end: padding
    t = tok.encode(batch)
    out = dict(tokens=np.asarray(t), recons=np.asarray(tok.decode_tokens(t)))
    outs.append({k: np.concatenate([v, np.repeat(v[-1:], rows - len(v), axis=0)]) for k, v in out.items()})
  gathered = distributed.gather_batches(outs, len(images))  # every process's batches, in order
  seconds = time.perf_counter() - start
  tokens, recons = gathered["tokens"], gathered["recons"]
  if jax.process_index() != 0:  # process 0 writes the one folder
    return 0

  mse = np.mean((np.clip(recons, 0, 1) - images) ** 2, axis=(1, 2, 3))
  psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-12))
  used = np.unique(tokens).size
  paths.makedirs(args.out)
  image_io.save_labelled_grid(paths.join(args.out, "reconstructions.png"),
                              np.concatenate([images, recons]), names + [""] * len(names), len(images),
                              row_labels=("original", "reconstruction"))
  buffer = io.BytesIO()  # one upload on an object store (np.savez seeks in what it writes)
  np.savez(buffer, tokens=tokens, names=np.array(names))
  paths.write_bytes_atomic(paths.join(args.out, "tokens.npz"), buffer.getvalue())
  summary = dict(images=len(images), size=size, token_grid=list(tokens.shape[1:]), codebook_size=tok.codebook_size,
                 unique_tokens=int(used), mean_psnr_db=float(np.mean(psnr)), seconds=round(seconds, 3),
                 random_init=bool(args.random_init))
  paths.write_text_atomic(paths.join(args.out, "summary.json"), json.dumps(summary, indent=1))
  for n, v in zip(names, psnr):
    print(f"{n:>24s}  PSNR {v:6.2f} dB")
  print(json.dumps(summary))
  print(f"wrote {paths.join(args.out, 'reconstructions.png')}")
  return 0


if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
