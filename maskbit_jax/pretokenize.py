"""Tokenize a dataset once: ``python -m maskbit_jax.pretokenize``.

  python -m maskbit_jax.pretokenize --config configs/maskbit_tokenizer_12bit.py \
      --checkpoint maskbit_tokenizer_12bit.bin --data tfds:imagenet2012:train --out data/in256_tok12

Writes ArrayRecord files ``tokens-PPPPP-of-NNNNN.array_record`` (one per
process) whose records hold, per image, the int32 tokens ``[h, w]`` of the
image and of its horizontal flip, the label and the image index
(msgpack via ``flax.serialization``), plus ``meta.json``. ``TokenDataset``
reads them back as a grain random-access source. Tokens equal what
``Tokenizer.encode`` gives on the fly.
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

META_FILE = "meta.json"


def shard_path(out_dir: str, process_index: int, process_count: int) -> str:
  return os.path.join(out_dir, f"tokens-{process_index:05d}-of-{process_count:05d}.array_record")


def encode_record(tokens: np.ndarray, tokens_flipped: np.ndarray, label: int, index: int) -> bytes:
  return serialization.msgpack_serialize(dict(tokens=np.asarray(tokens, np.int32),
                                              tokens_flipped=np.asarray(tokens_flipped, np.int32),
                                              label=np.int32(label), index=np.int64(index)))


def decode_record(record: bytes) -> dict:
  return serialization.msgpack_restore(record)


def pretokenize(tok, source, out_dir: str, *, batch_size: int, num_images: int | None = None,
                overwrite: bool = False) -> dict:
  """Encodes ``source`` (and its flips) with ``tok`` into ``out_dir``; returns the metadata written."""
  from array_record.python.array_record_module import ArrayRecordWriter

  from maskbit_jax import sharding
  from maskbit_jax.data.sources import eval_batches, shard_indices

  n_dev = jax.local_device_count()
  if batch_size % n_dev:
    raise ValueError(f"--batch_size {batch_size} must be a multiple of the {n_dev} local devices")
  total = len(source) if num_images is None else min(num_images, len(source))
  pid, pcount = jax.process_index(), jax.process_count()
  os.makedirs(out_dir, exist_ok=True)
  final = shard_path(out_dir, pid, pcount)
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
  mesh = sharding.create_mesh({"data": -1}, jax.local_devices())
  batch_sh = sharding.batch_sharding(mesh, 4)

  @jax.jit
  def encode_both(params, images):
    both = jnp.concatenate([images, images[:, :, ::-1]])
    _, result = tok.module.apply({"params": params}, both, method="encode")
    idx = result["min_encoding_indices"]
    return idx[: images.shape[0]], idx[images.shape[0]:]

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
        writer.write(encode_record(tokens[j], flipped[j], int(batch["label"][j]), int(mine[b * batch_size + j])))
        written += 1
    writer.close()
  except BaseException:
    writer.close()
    os.remove(tmp)
    raise
  os.replace(tmp, final)  # a half-written shard never carries the final name
  meta = dict(num_images=total, process_count=pcount, token_grid=list(tokens.shape[1:]),
              codebook_size=tok.codebook_size, config=tok.config.to_dict(), seconds=round(time.perf_counter() - start, 3))
  if pid == 0:
    with open(os.path.join(out_dir, META_FILE), "w") as f:
      json.dump(meta, f, indent=1)
  if written != len(mine):
    raise AssertionError(f"wrote {written} records for {len(mine)} images")
  return meta


class TokenDataset:
  """Random-access source over a pretokenized folder: ``{"tokens", "tokens_flipped", "label", "index"}``."""

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
    if len(self.source) != self.meta["num_images"]:
      raise ValueError(f"{out_dir}: {len(self.source)} records, meta.json says {self.meta['num_images']}")

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return decode_record(self.source[index])


def main(argv=None) -> int:
  from maskbit_jax.config import load_config, split_config_args
  from maskbit_jax.data.sources import make_source
  from maskbit_jax.tokenizer import load_tokenizer

  config, overrides, rest = split_config_args(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="python -m maskbit_jax.pretokenize", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint")
  p.add_argument("--random_init", action="store_true")
  p.add_argument("--data", required=True, help="photos | synthetic:N | tfds:NAME:SPLIT[:DIR] | image folder")
  p.add_argument("--size", type=int, default=None)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--num_images", type=int, default=None)
  p.add_argument("--out", required=True)
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(rest)
  if config is None:
    p.error("--config is required")
  cfg = load_config(config, overrides)
  tok = load_tokenizer(cfg, args.checkpoint, random_init=args.random_init)
  size = args.size or int(cfg.get("dataset", {}).get("preprocessing", {}).get("resolution", 256))
  meta = pretokenize(tok, make_source(args.data, size), args.out, batch_size=args.batch_size,
                     num_images=args.num_images, overwrite=args.overwrite)
  if jax.process_index() == 0:
    print(f"wrote {meta['num_images']} images' tokens ({meta['token_grid']} grid) to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
