"""Tokenize a dataset once: ``python -m maskbit_jax.pretokenize``.

  python -m maskbit_jax.pretokenize --config configs/maskbit_tokenizer_12bit.py \\
      --checkpoint maskbit_tokenizer_12bit.bin --data tfds:imagenet2012:train --out data/in256_tok12

  python -m maskbit_jax.pretokenize --config configs/bar_b.py --checkpoint bar_fsq_16bits.bin \\
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

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax import cli_errors, paths, registry, shard_plan
from maskbit_jax.data.token_dataset import META_FILE, TokenDataset, decode_record, encode_record  # noqa: F401

DEFAULT_SHARD_SIZE = 4096  # records: a rerun redoes at most this many; ImageNet's train split is 313 shards


def record_batches(source, ranges: list[tuple[int, int]], batch_size: int, *, num_threads: int = 8,
                   prefetch: int = 16):
  """Batches of the records of ``ranges`` (``[start, stop)`` each, in order), every range's last batch padded:
  ``{"image": float32 [b, H, W, 3], "label": int32 [b], "record": int64 [b], "mask": bool [b]}``.

  Decoding and resizing run in ``num_threads`` grain threads, ``prefetch`` examples ahead; a padding row
  repeats the range's last record with ``mask`` False, so no batch mixes two ranges and none is dropped.
  """
  import grain

  rows = []
  for start, stop in ranges:
    n = stop - start
    rows += [(start + min(j, n - 1), j < n) for j in range(-(-n // batch_size) * batch_size)]

  def load(row):
    record, real = row
    ex = source[int(record)]
    return {"image": np.asarray(ex["image"], np.float32), "label": np.int32(ex["label"]),
            "record": np.int64(record), "mask": np.bool_(real)}

  ds = grain.MapDataset.source(rows).map(load)
  options = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
  return ds.to_iter_dataset(options).batch(batch_size, drop_remainder=True)


def progress_line(done: int, total: int, images_per_s: float | None) -> str:
  """``done`` of ``total`` images at ``images_per_s`` (compile excluded), with the time left."""
  if not images_per_s:
    return f"pretokenize: {done}/{total} images"
  eta = time.strftime("%H:%M:%S", time.gmtime((total - done) / images_per_s))
  return f"pretokenize: {done}/{total} images, {images_per_s:.1f} images/s, ETA {eta}"


class _Progress:
  """Prints :func:`progress_line` every ``every_s`` seconds; the clock starts after the first batch (the compile)."""

  def __init__(self, total: int, every_s: float, show: bool):
    self.total, self.every_s, self.show = total, every_s, show
    self.done, self.first, self.start, self.last = 0, 0, None, 0.0

  def update(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if self.start is None:
      self.start, self.first, self.last = now, self.done, now
    elif self.show and now - self.last >= self.every_s:
      self.last = now
      print(self.line(), file=sys.stderr, flush=True)

  def images_per_s(self) -> float | None:
    if self.start is None or self.done == self.first:
      return None
    return (self.done - self.first) / (time.perf_counter() - self.start)

  def line(self) -> str:
    return progress_line(self.done, self.total, self.images_per_s())


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def pretokenize(tok, source, out_dir: str, *, batch_size: int, num_images: int | None = None,
                overwrite: bool = False, crop: str = "center", shard_size: int = DEFAULT_SHARD_SIZE,
                plan: dict | None = None, num_threads: int = 8, prefetch: int = 16, progress_s: float = 10.0,
                stop_after_shards: int | None = None) -> dict | None:
  """Encodes ``source`` (and its flips) with ``tok`` into ``out_dir``; returns the metadata written.

  ``crop`` names the source's preprocessing for the metadata. A source with ``crops`` > 1
  (:class:`~maskbit_jax.data.sources.RandomResizedCropsSource`) gives that many records per image;
  ``num_images`` counts images. Records go into shards of ``shard_size`` (:mod:`maskbit_jax.shard_plan`),
  split over the processes; shards finished by an earlier run with the same ``plan`` (the arguments that
  decide the content: the caller's, plus the tokenizer config, crop and sizes) are skipped, a folder of
  another plan is refused unless ``overwrite``. Every process encodes on its own devices; process 0 writes
  ``meta.json`` listing every shard once all exist. ``stop_after_shards``: end after this many new shards of
  this process, returning None (an interrupted run, for tests).
  """
  from maskbit_jax import distributed, sharding

  n_dev = jax.local_device_count()
  if batch_size % n_dev:
    raise ValueError(f"--batch_size {batch_size} must be a multiple of the {n_dev} local devices")
  crops = int(getattr(source, "crops", 1))
  images = len(source) // crops
  images = images if num_images is None else min(num_images, images)
  total = images * crops  # records
  pid, pcount = jax.process_index(), jax.process_count()
  field, encode, grid_of, extra_meta = _encoder(tok)
  meta = dict(num_images=images, crops=crops, num_records=total, field=field, token_grid=grid_of(source, total),
              crop=crop, **extra_meta, config=tok.config.to_dict(), shard_size=int(shard_size))
  if crops > 1:  # how the crops were drawn (RandomResizedCropsSource)
    meta["crop_options"] = dict(getattr(source, "options", {}), seed=getattr(source, "seed", None))
  full_plan = dict(plan or {}, **meta)

  # every process checks before anything is written, so all refuse alike; then process 0 lays the plan down
  resuming = False if overwrite else shard_plan.check_plan(out_dir, full_plan)
  _barrier("pretokenize_checked")
  if pid == 0 and not resuming:
    if overwrite:
      shard_plan.clear(out_dir)
    shard_plan.write_plan(out_dir, full_plan)
  _barrier("pretokenize_planned")

  ranges = shard_plan.shard_ranges(total, shard_size)
  names = [paths.join(out_dir, shard_plan.shard_name(s, len(ranges))) for s in range(len(ranges))]
  mine = [s for s in distributed.process_batch_ids(len(ranges), pid, pcount) if s < len(ranges)]
  todo = [s for s in mine if not shard_plan.is_done(names[s], ranges[s][1] - ranges[s][0])]

  mesh = sharding.create_mesh({"data": -1}, jax.local_devices())
  batch_sh = sharding.batch_sharding(mesh, 4)

  @jax.jit
  def encode_both(params, images):
    out = encode(params, jnp.concatenate([images, images[:, :, ::-1]]))
    return out[: images.shape[0]], out[images.shape[0]:]

  # replicated over the local mesh: params saved from (or loaded onto) one device would clash with the batch
  params = jax.device_put(tok.params, sharding.replicated(mesh))

  def encoded(batches):
    """(host batch, tokens, flipped tokens), one batch behind: batch i+1 is dispatched before i is fetched."""
    dispatch = lambda batch: encode_both(params, jax.device_put(batch.pop("image"), batch_sh))
    return ((batch, *out) for batch, out in distributed.one_batch_behind(batches, dispatch))

  todo_ranges = [ranges[s] for s in todo]
  progress = _Progress(sum(b - a for a, b in todo_ranges), progress_s, show=pid == 0)
  stream = encoded(record_batches(source, todo_ranges, batch_size, num_threads=num_threads, prefetch=prefetch))
  for count, (s, (start, stop)) in enumerate(zip(todo, todo_ranges)):
    if stop_after_shards is not None and count >= stop_after_shards:
      return None
    staged = shard_plan.local_staging(names[s])
    written = _write_shard(staged, stream, -(-(stop - start) // batch_size), field, crops, progress)
    if written != stop - start:
      raise AssertionError(f"wrote {written} records for the {stop - start} of shard {s}")
    shard_plan.publish(staged, names[s], written)  # a half-written shard never carries the final name
  rate = progress.images_per_s()
  if pid == 0 and rate is not None:
    print(progress.line(), file=sys.stderr, flush=True)

  _barrier("pretokenize_shards_written")
  meta["shards"] = [dict(file=shard_plan.shard_name(s, len(ranges)), records=b - a) for s, (a, b) in enumerate(ranges)]
  if pid == 0:  # every shard is finished (by any process, in this run or an earlier one): the one meta
    missing = [names[s] for s, (a, b) in enumerate(ranges) if not shard_plan.is_done(names[s], b - a)]
    if missing:
      raise RuntimeError(f"{len(missing)} shards are not finished, e.g. {missing[0]}")
    paths.write_text_atomic(paths.join(out_dir, META_FILE), json.dumps(meta, indent=1))
  _barrier("pretokenize_meta_written")
  return dict(meta, images_per_s=rate, new_shards=len(todo))


def _write_shard(staged: str, stream, num_batches: int, field: str, crops: int, progress: _Progress) -> int:
  """Writes the real rows of the next ``num_batches`` of ``stream`` into the ArrayRecord file ``staged``;
  returns how many. A failure removes the file (nothing partial stays behind under any name)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(staged, "group_size:1")
  written = 0
  try:
    for _ in range(num_batches):
      batch, tokens, flipped = next(stream)
      for j in np.flatnonzero(batch["mask"]):
        image, c = divmod(int(batch["record"][j]), crops)
        writer.write(encode_record(tokens[j], flipped[j], int(batch["label"][j]), image, field=field,
                                   crop=c if crops > 1 else None))
        written += 1
      progress.update(int(batch["mask"].sum()))
    writer.close()
  except BaseException:
    writer.close()
    shard_plan.discard(staged)
    raise
  return written


def _encoder(tok):
  """(record field, ``encode(params, images01 [B, H, W, 3]) -> [B, ...]``, grid of a source, extra meta)."""
  if registry.of(tok).bits == "bar_fsq":  # BAR's binary FSQ: bits, from images in [-1, 1]
    if not tok.module.with_encoder:
      raise ValueError("this BAR tokenizer was loaded decode-only; load it with with_encoder=True to pretokenize")

    def encode(params, images01):  # BAR's SigLIP2 encoder takes [-1, 1]
      bits = tok.module.apply({"params": params}, images01 * 2.0 - 1.0, method="encode_bits")
      return bits.astype(jnp.uint8)

    meta = dict(token_bits=tok.token_bits, codebook_size=int(tok.module.codebook_size), tokenizer="bar_fsq")
    return "bits", encode, (lambda source, n: list(tok.grid)), meta

  def encode(params, images01):
    _, result = tok.module.apply({"params": params}, images01, method="encode")
    return result["min_encoding_indices"]

  def grid(source, n):  # from one image's shape (the same for every image of a source)
    if n == 0:
      return None
    h, w = np.asarray(source[0]["image"]).shape[:2]
    return [h // tok.latent_stride, w // tok.latent_stride]

  meta = dict(codebook_size=tok.codebook_size, tokenizer="maskbit")
  return "tokens", encode, grid, meta


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
