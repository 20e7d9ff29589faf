"""Training input pipelines with grain: per-process shard, seeded shuffle per epoch, augmentation, batching.

The pipeline is a ``grain.MapDataset`` chain turned into an iterator, so its
position is a small JSON-able state (``iterator.get_state()``) that goes into
every checkpoint; a resumed run calls ``set_state`` and sees exactly the
examples the uninterrupted run would have seen.

Each process reads only its own slice of the source (``source[p::P]``) and
yields its ``global_batch / P`` examples per step; the train loop assembles
the global batch across processes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import grain
import numpy as np

from maskbit_jax.data import augment
from maskbit_jax.data.sources import CorruptImageError

log = logging.getLogger(__name__)

CORRUPT_POLICIES = ("error", "skip")
# With ``skip``, give up when this many images in a row fail to decode (a folder of broken files).
MAX_CONSECUTIVE_CORRUPT = 64


@dataclasses.dataclass
class CorruptCounter:
  """Counts images skipped as undecodable (thread-safe; grain maps in threads)."""

  skipped: int = 0
  consecutive: int = 0
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  def failed(self, error: Exception) -> None:
    with self.lock:
      self.skipped += 1
      self.consecutive += 1
      count, consecutive = self.skipped, self.consecutive
    log.warning("skipping corrupt image (%d skipped so far): %s", count, error)
    if consecutive >= MAX_CONSECUTIVE_CORRUPT:
      raise CorruptImageError(f"{consecutive} images in a row could not be decoded (last: {error}); "
                              "the dataset looks broken")

  def ok(self) -> None:
    with self.lock:
      self.consecutive = 0


def check_batch(global_batch: int, process_count: int, data_parallel: int) -> int:
  """The per-process batch; errors name the numbers that do not divide."""
  if global_batch < 1:
    raise ValueError(f"the global batch must be >= 1, got {global_batch}")
  if global_batch % data_parallel:
    raise ValueError(f"global batch {global_batch} is not divisible by the {data_parallel} devices of the "
                     "mesh's batch axes (data x fsdp)")
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by the {process_count} processes")
  return global_batch // process_count


def overfit_batches(training: Any) -> int:
  """``training.overfit_batch_num`` when ``training.overfit_batch`` is set (the reference's debugging mode:
  train on the first that many batches over and over), else 0."""
  training = training or {}
  if not bool(training.get("overfit_batch", False)):
    return 0
  num = int(training.get("overfit_batch_num", 1))
  if num < 1:
    raise ValueError(f"training.overfit_batch_num must be >= 1 with training.overfit_batch, got {num}")
  return num


def _stream(ds: grain.MapDataset, load, *, seed: int, batch_size: int, overfit: int) -> grain.MapDataset:
  """``ds`` (this process's indices) shuffled per epoch and loaded with per-position randomness, forever; with
  ``overfit`` > 0 only the first ``overfit`` batches of that stream, the very same examples (augmentation
  included) repeated in the same order, as the reference's list of its first batches."""
  if not overfit:
    return ds.shuffle(seed=seed).repeat().random_map(load, seed=seed + 1)
  picked = [int(i) for i in ds.shuffle(seed=seed)[:overfit * batch_size]]
  if len(picked) < overfit * batch_size:
    raise ValueError(f"training.overfit_batch_num={overfit} batches of {batch_size} need {overfit * batch_size} "
                     f"examples on each process, this one has {len(picked)}")
  fixed = grain.MapDataset.source(list(enumerate(picked)))
  return fixed.map(lambda pos_index: load(pos_index[1], np.random.default_rng((seed + 1, pos_index[0])))).repeat()


def image_train_dataset(source, *, size: int, batch_size: int, seed: int, preprocessing: Any = None,
                        process_index: int = 0, process_count: int = 1, corrupt_images: str = "error",
                        num_threads: int = 8, prefetch_buffer_size: int = 16,
                        counter: CorruptCounter | None = None, overfit: int = 0) -> grain.IterDataset:
  """Batches ``{"image": float32 [b, size, size, 3], "label": int32 [b]}`` of this process, forever.

  ``batch_size`` is the per-process batch; incomplete batches never occur
  (the dataset repeats, reshuffled every epoch with ``seed``). ``preprocessing``:
  ``dataset.preprocessing`` (``use_random_crop``, ``use_aspect_ratio_aug``,
  ``min_scale``, ``interpolation``, ``random_flip``; see :func:`augment.train_transform`).
  ``overfit``: :func:`overfit_batches`.
  """
  if corrupt_images not in CORRUPT_POLICIES:
    raise ValueError(f"dataset.corrupt_images={corrupt_images!r}; use one of {CORRUPT_POLICIES}")
  pre = dict(preprocessing or {})
  augment.check_preprocessing({**pre, "resolution": size})
  if len(source) < process_count:
    raise ValueError(f"the dataset has {len(source)} examples, fewer than the {process_count} processes")
  counter = counter or CorruptCounter()
  options = dict(use_random_crop=bool(pre.get("use_random_crop", True)),
                 use_aspect_ratio_aug=bool(pre.get("use_aspect_ratio_aug", True)),
                 min_scale=float(pre.get("min_scale", 0.8)), interp=str(pre.get("interpolation", "bilinear")),
                 random_flip=bool(pre.get("random_flip", True)))

  def load(index, rng):
    try:
      ex = source.raw(int(index))
    except CorruptImageError as e:
      if corrupt_images == "error":
        raise
      counter.failed(e)
      return None
    counter.ok()
    return {"image": augment.train_transform(ex["image"], size, rng, **options), "label": np.int32(ex["label"])}

  ds = grain.MapDataset.range(len(source))[process_index::process_count]
  ds = _stream(ds, load, seed=seed, batch_size=batch_size, overfit=overfit)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
  return it.batch(batch_size, drop_remainder=True)


def token_train_dataset(token_source, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                        random_flip: bool = True, num_threads: int = 8, prefetch_buffer_size: int = 16,
                        overfit: int = 0) -> grain.IterDataset:
  """Batches ``{"tokens": int32 [b, h, w], "label": int32 [b]}`` from a pretokenized set.

  A flip is the tokens of the flipped image (stored next to the originals by
  ``pretokenize``), chosen with probability 1/2 like the reference's flip.
  """
  if len(token_source) < process_count:
    raise ValueError(f"the token set has {len(token_source)} examples, fewer than the {process_count} processes")

  def load(index, rng):
    ex = token_source[int(index)]
    flip = random_flip and rng.uniform() < 0.5
    return {"tokens": np.asarray(ex["tokens_flipped" if flip else "tokens"], np.int32),
            "label": np.int32(ex["label"])}

  ds = grain.MapDataset.range(len(token_source))[process_index::process_count]
  ds = _stream(ds, load, seed=seed, batch_size=batch_size, overfit=overfit)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
  return it.batch(batch_size, drop_remainder=True)
