"""Tokenizing a dataset once into ArrayRecord shards (resumable shard by shard, split over processes).

``pretokenize(tok, source, out_dir, ...)`` writes the set that ``data.token_dataset.TokenDataset`` reads; the
record layout and the shard plan are described in the command's help (``maskbit_jax.cli.pretokenize``).
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax import distributed, paths, registry, shard_plan, sharding
from maskbit_jax.data.token_dataset import META_FILE, encode_record

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
