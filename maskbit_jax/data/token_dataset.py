"""A pretokenized set (``python -m maskbit_jax.pretokenize`` writes it): its records and ``TokenDataset``, the
random-access source training reads them from.

Each record holds one image's tokens (or BAR-FSQ bits), those of its horizontal flip, its label and index,
as msgpack; ``meta.json`` describes the set (tokenizer kind, grid, bits, shards).
"""

from __future__ import annotations

import json

import numpy as np
from flax import serialization

from maskbit_jax import paths

META_FILE = "meta.json"


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

    meta_path = paths.join(out_dir, META_FILE)
    if not paths.isfile(meta_path):
      raise FileNotFoundError(f"{out_dir} is not a pretokenized dataset (no {META_FILE})")
    self.meta = json.loads(paths.resolve(meta_path).read_text())
    if "shards" in self.meta:  # the meta lists every shard
      files = [paths.join(out_dir, s["file"]) for s in self.meta["shards"]]
      missing = [f for f in files if not paths.exists(f)]
      if missing:
        raise FileNotFoundError(f"{out_dir}: {len(missing)} of the {len(files)} shards in {META_FILE} are missing, "
                                f"e.g. {missing[0]}")
    else:  # sets written before: one shard per process
      files = sorted(str(p) for p in paths.resolve(out_dir).glob("tokens-*-of-*.array_record"))
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


__all__ = ["META_FILE", "TokenDataset", "decode_record", "encode_record"]
