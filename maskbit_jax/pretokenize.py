"""Tokenize a dataset once: ``python -m maskbit_jax.pretokenize``.

  python -m maskbit_jax.pretokenize --config configs/maskbit_tokenizer_12bit.py \\
      --checkpoint maskbit_tokenizer_12bit.bin --data tfds:imagenet2012:train --out data/in256_tok12

  python -m maskbit_jax.pretokenize --config configs/bar_b.py --checkpoint bar_fsq_16bits.bin \\
      --data tfds:imagenet2012:train --out data/in256_bar16

Writes ArrayRecord files ``tokens-PPPPP-of-NNNNN.array_record`` (one per
process) whose records hold, per image, the tokens of the image and of its
horizontal flip, the label and the image index (msgpack via
``flax.serialization``), plus ``meta.json``. The image is the reference's
evaluation crop (or ADM's, ``--crop adm``); with ``--crops K`` (K > 1) each
image gives K records instead, K ``RandomResizedCrop`` s of the config's
training recipe (and their flips), record ``i * K + c`` holding crop ``c``
(``"crop"``) of image ``i``, so a shuffled pass over the set sees every crop
once (docs/training.md, "Pretokenized sets"). A MaskBit tokenizer (or a BAR
config on MaskBit's LFQ tokens) writes int32 ``tokens`` / ``tokens_flipped``
``[h, w]``; a BAR config on BAR's binary-FSQ tokenizer writes its bits, uint8
``bits`` / ``bits_flipped`` ``[h*w, K]``, never packed, as the reference stores
them (its encoder sees images in [-1, 1]). ``TokenDataset`` reads them back as a
grain random-access source. Tokens equal what the tokenizer's encoder gives on
the fly.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from maskbit_jax import cli_errors

META_FILE = "meta.json"


def shard_path(out_dir: str, process_index: int, process_count: int) -> str:
  return os.path.join(out_dir, f"tokens-{process_index:05d}-of-{process_count:05d}.array_record")


def encode_record(tokens: np.ndarray, tokens_flipped: np.ndarray, label: int, index: int, *,
                  field: str = "tokens", crop: int | None = None) -> bytes:
  """One image's record; ``field`` "tokens" (int32 indices ``[h, w]``) or "bits" (uint8 ``[h*w, K]``);
  ``crop``: which of the image's random crops (only in sets of several crops per image)."""
  dtype = np.uint8 if field == "bits" else np.int32
  record = {field: np.asarray(tokens, dtype), f"{field}_flipped": np.asarray(tokens_flipped, dtype),
            "label": np.int32(label), "index": np.int64(index)}
  if crop is not None:
    record["crop"] = np.int32(crop)
  return serialization.msgpack_serialize(record)


def decode_record(record: bytes) -> dict:
  return serialization.msgpack_restore(record)


def pretokenize(tok, source, out_dir: str, *, batch_size: int, num_images: int | None = None,
                overwrite: bool = False, crop: str = "center") -> dict:
  """Encodes ``source`` (and its flips) with ``tok`` into ``out_dir``; returns the metadata written.
  ``crop`` names the source's preprocessing for the metadata. A source with ``crops`` > 1
  (:class:`~maskbit_jax.data.sources.RandomResizedCropsSource`) gives that many records per image;
  ``num_images`` counts images."""
  from array_record.python.array_record_module import ArrayRecordWriter

  from maskbit_jax import sharding
  from maskbit_jax.data.sources import eval_batches, shard_indices

  n_dev = jax.local_device_count()
  if batch_size % n_dev:
    raise ValueError(f"--batch_size {batch_size} must be a multiple of the {n_dev} local devices")
  crops = int(getattr(source, "crops", 1))
  images = len(source) // crops
  images = images if num_images is None else min(num_images, images)
  total = images * crops  # records
  pid, pcount = jax.process_index(), jax.process_count()
  os.makedirs(out_dir, exist_ok=True)
  final = shard_path(out_dir, pid, pcount)
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
  mesh = sharding.create_mesh({"data": -1}, jax.local_devices())
  batch_sh = sharding.batch_sharding(mesh, 4)

  field, encode, grid_of, extra_meta = _encoder(tok)

  @jax.jit
  def encode_both(params, images):
    out = encode(params, jnp.concatenate([images, images[:, :, ::-1]]))
    return out[: images.shape[0]], out[images.shape[0]:]

  # replicated over the local mesh: params saved from (or loaded onto) one device would clash with the batch
  params = jax.device_put(tok.params, sharding.replicated(mesh))
  mine = shard_indices(total, pid, pcount)
  tmp = final + ".tmp"
  writer = ArrayRecordWriter(tmp, "group_size:1")
  written, start = 0, time.perf_counter()
  try:
    for b, batch in enumerate(eval_batches(source, batch_size, num=total, process_index=pid, process_count=pcount)):
      tokens, flipped = jax.device_get(encode_both(params, jax.device_put(batch["image"], batch_sh)))
      for j in np.flatnonzero(batch["mask"]):
        image, c = divmod(int(mine[b * batch_size + j]), crops)
        writer.write(encode_record(tokens[j], flipped[j], int(batch["label"][j]), image, field=field,
                                   crop=c if crops > 1 else None))
        written += 1
    writer.close()
  except BaseException:
    writer.close()
    os.remove(tmp)
    raise
  os.replace(tmp, final)  # a half-written shard never carries the final name
  meta = dict(num_images=images, crops=crops, num_records=total, process_count=pcount, field=field,
              token_grid=grid_of(source, total), crop=crop, **extra_meta, config=tok.config.to_dict(),
              seconds=round(time.perf_counter() - start, 3))
  if crops > 1:  # how the crops were drawn (RandomResizedCropsSource)
    meta["crop_options"] = dict(getattr(source, "options", {}), seed=getattr(source, "seed", None))
  if pid == 0:
    with open(os.path.join(out_dir, META_FILE), "w") as f:
      json.dump(meta, f, indent=1)
  if written != len(mine):
    raise AssertionError(f"wrote {written} records for {len(mine)} images")
  return meta


def _encoder(tok):
  """(record field, ``encode(params, images01 [B, H, W, 3]) -> [B, ...]``, grid of a source, extra meta)."""
  from maskbit_jax.bar import BarFsqTokenizer

  if isinstance(tok, BarFsqTokenizer):
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


class TokenDataset:
  """Random-access source over a pretokenized folder: ``{"tokens", "tokens_flipped", "label", "index"}`` (or
  ``"bits"`` / ``"bits_flipped"`` for BAR's binary-FSQ tokenizer; ``meta["field"]`` says which).

  A set of ``crops`` K > 1 random crops per image holds ``num_images * K`` records (each with ``"crop"``),
  record ``i * K + c`` crop ``c`` of image ``i``: training shuffles them all, so one pass over this source
  is K epochs of the images, each seeing one stored crop (and a flip drawn with it) of every image, and every
  crop exactly once. Sets written before ``crops`` existed hold one centre crop per image.
  """

  def __init__(self, out_dir: str):
    import grain.python as grain

    meta_path = os.path.join(out_dir, META_FILE)
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"{out_dir} is not a pretokenized dataset (no {META_FILE})")
    with open(meta_path) as f:
      self.meta = json.load(f)
    files = sorted(glob.glob(os.path.join(out_dir, "tokens-*-of-*.array_record")))
    if len(files) != self.meta["process_count"]:
      raise ValueError(f"{out_dir}: {len(files)} token shards, meta.json says {self.meta['process_count']}")
    self.source = grain.ArrayRecordDataSource(files)
    self.crops = int(self.meta.get("crops", 1))
    self.num_images = int(self.meta["num_images"])
    if len(self.source) != self.num_images * self.crops:
      says = f"{self.num_images} images" + (f" x {self.crops} crops" if self.crops > 1 else "")
      raise ValueError(f"{out_dir}: {len(self.source)} records, meta.json says {says}")

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return decode_record(self.source[index])

  def check_matches(self, where: str, *, tokenizer: str, grid, bits: int) -> None:
    """Refuses a set that does not hold the model's tokens: ``tokenizer`` kind (``"maskbit"`` or
    ``"bar_fsq"``), token ``grid`` ``(h, w)`` and ``bits`` per token, each named in the error."""
    meta = self.meta
    made_by = meta.get("tokenizer")
    if made_by is not None and made_by != tokenizer:
      raise ValueError(f"{where} holds {made_by} tokens but this config's tokenizer is {tokenizer}")
    held = meta.get("token_grid")
    if held is not None and tuple(held) != tuple(grid):
      raise ValueError(f"{where} holds a {tuple(held)} token grid; the model takes {tuple(grid)}")
    held_bits = meta.get("token_bits")
    if held_bits is None and meta.get("codebook_size"):
      held_bits = int(meta["codebook_size"]).bit_length() - 1
    if held_bits is not None and int(held_bits) != int(bits):
      raise ValueError(f"{where} holds {held_bits}-bit tokens; the model takes {bits} bits per token")


def main(argv=None) -> int:
  from maskbit_jax import bar
  from maskbit_jax.config import add_config_help, load_config, split_config_args
  from maskbit_jax.data import sources
  from maskbit_jax.tokenizer import load_tokenizer

  config, overrides, rest = split_config_args(sys.argv[1:] if argv is None else argv)
  p = cli_errors.parser("python -m maskbit_jax.pretokenize", __doc__)
  add_config_help(p)
  p.add_argument("--checkpoint")
  p.add_argument("--random_init", action="store_true")
  p.add_argument("--data", required=True, help="photos | synthetic:N | tfds:NAME:SPLIT[:DIR] | image folder")
  p.add_argument("--size", type=int, default=None)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--num_images", type=int, default=None)
  p.add_argument("--out", required=True)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--crops", type=int, default=1,
                 help="K > 1: K random-resized crops per image (the config's dataset.preprocessing recipe: "
                      "min_scale, use_aspect_ratio_aug, interpolation) and their flips, for a training split; "
                      "1 (default): one evaluation crop and its flip")
  p.add_argument("--seed", type=int, default=0, help="seed of the --crops draws")
  p.add_argument("--crop", choices=("center", "adm"), default=None,
                 help="the reference's evaluation crop (shorter side resized with the config's interpolation, "
                      "then the centre), or ADM's box-halving crop (default: adm for BAR's binary-FSQ tokenizer, as "
                      "its reference pretokenizes; center otherwise)")
  args = p.parse_args(rest)
  if config is None:
    p.error("--config is required")
  if args.crops < 1:
    p.error(f"--crops must be >= 1, got {args.crops}")
  if args.crops > 1 and args.crop is not None:
    p.error(f"--crop {args.crop} makes one crop per image; --crops {args.crops} draws random-resized crops")
  if args.seed < 0:
    p.error(f"--seed must be >= 0, got {args.seed}")
  cfg = load_config(config, overrides)
  pre = cfg.get("dataset", {}).get("preprocessing", {})
  if args.crops > 1 and "min_scale" not in pre:
    p.error(f"--crops {args.crops}: this config's dataset.preprocessing has no RandomResizedCrop recipe "
            "(min_scale, use_aspect_ratio_aug, interpolation; BAR's trains on one ADM crop per image)")
  # BAR's released configs name the image size crop_size
  size = args.size or int(pre.get("resolution", pre.get("crop_size", 256)))
  if bar.is_bar_config(cfg):  # the tokenizer a BAR config trains on: MaskBit's LFQ or BAR's binary FSQ
    tok = bar.load_bar_tokenizer(cfg, args.checkpoint, random_init=args.random_init, with_encoder=True)
    if isinstance(tok, bar.BarFsqTokenizer) and size != tok.module.image_size:
      raise ValueError(f"--size {size}: this BAR tokenizer encodes {tok.module.image_size} px images")
  else:
    tok = load_tokenizer(cfg, args.checkpoint, random_init=args.random_init)
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
    crop = args.crop or ("adm" if isinstance(tok, bar.BarFsqTokenizer) else "center")
  if crop == "adm":
    source = sources.AdmCropSource(source, size)
  meta = pretokenize(tok, source, args.out, batch_size=args.batch_size,
                     num_images=args.num_images, overwrite=args.overwrite, crop=crop)
  if jax.process_index() == 0:
    crops = f" x {meta['crops']} crops" if meta["crops"] > 1 else ""
    print(f"wrote {meta['num_images']} images'{crops} tokens ({meta['token_grid']} grid) to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
