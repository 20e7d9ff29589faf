"""Evaluating models: a tokenizer's reconstructions (rFID, IS, PSNR, SSIM, LPIPS, codebook use) and a
generator's class-balanced samples (FID, IS), for any registered family; the networks the metrics need.

The command ``python -m maskbit_jax.evaluate`` and training's in-run evaluation both call these.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from maskbit_jax import distributed, image_io, sharding
from maskbit_jax.data.sources import eval_dataset
from maskbit_jax.evaluation import accumulator
from maskbit_jax.evaluation.adm_samples import AdmSamplesWriter
from maskbit_jax.evaluation.codebook import CodebookStats
from maskbit_jax.evaluation.fid import FeatureStats, fid_from_stats
from maskbit_jax.evaluation.inception import InceptionV3, load_inception_params
from maskbit_jax.evaluation.inception_score import ADM_IS_SPLIT_SIZE, InceptionScore, InceptionScoreSplits
from maskbit_jax.evaluation.reconstruction import (RECONSTRUCTION_METRICS, ReconstructionMetrics,
                                                   reconstruction_metrics_per_image)
from maskbit_jax.losses.perceptual import load_lpips_params
from maskbit_jax.models.vgg_lpips import LPIPS
from maskbit_jax.sampling import api as sampling_api

IMAGE_SLACK = 1e-6


class Progress:
  """Prints done/total, images/s and ETA on process 0, at most every ``every`` seconds (and at the end)."""

  def __init__(self, total: int, every: float = 10.0):
    self.total, self.every = total, every
    self.start = self.last = time.perf_counter()

  def update(self, done: int) -> None:
    now = time.perf_counter()
    if done < self.total and now - self.last < self.every:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = (self.total - done) / max(rate, 1e-9)
    if jax.process_index() == 0:
      print(f"  {done}/{self.total} images  {rate:.2f} img/s  ETA {eta / 60:.1f} min", flush=True)


def to_uint8(images_bhwc: jax.Array) -> jax.Array:
  """[0, 1] floats -> uint8 on the device as the reference feeds Inception (``image_io.to_uint8``: clamp,
  x255, truncate)."""
  return image_io.to_uint8(jnp.asarray(images_bhwc))


def check_batch_size(batch_size: int) -> int:
  """``batch_size`` if it is >= 1 and a multiple of the local devices (each gets an equal share)."""
  n_dev = jax.local_device_count()
  if batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
  if batch_size % n_dev:
    raise ValueError(f"--batch_size {batch_size} must be a multiple of the {n_dev} local devices")
  return batch_size


def _mesh_and_batch_sharding():
  mesh = sharding.create_mesh({"data": -1}, jax.local_devices())
  return mesh, functools.partial(sharding.batch_sharding, mesh)


# -- tokenizer ---------------------------------------------------------------------------

def tokenizer_eval_step(tok, inception=None, lpips=None):
  """Jitted ``step(tok_params, inception_vars, lpips_vars, images01 [B, H, W, 3]) -> dict`` of one batch: the
  token indices, per-image reconstruction metrics and, with ``inception`` / ``lpips``, their outputs."""

  def step(tok_params, inc_vars, lpips_vars, images):
    z_q, result = tok.module.apply({"params": tok_params}, images, method="encode")
    recon = jnp.clip(tok.module.apply({"params": tok_params}, z_q, method="decode"), 0.0, 1.0)
    out = dict(indices=result["min_encoding_indices"], per_image=reconstruction_metrics_per_image(images, recon))
    if inception is not None:
      fake = inception[0].apply(inc_vars, to_uint8(recon))
      real = inception[0].apply(inc_vars, to_uint8(images))
      out.update(fake_2048=fake["2048"], real_2048=real["2048"], fake_logits=fake["logits_unbiased"])
    if lpips is not None:
      out["lpips"] = lpips[0].apply(lpips_vars, images, recon)
    return out

  return jax.jit(step)


def evaluate_tokenizer(tok, source, *, batch_size: int, num_images: int | None, inception=None, lpips=None,
                       progress: bool = True, num_threads: int = 4, prefetch: int | None = None) -> dict:
  """Reconstruction metrics of ``tok`` over ``source`` (a grain-style random-access source).

  ``inception``: ``(module, variables)`` for rFID and IS; ``lpips``:
  ``(module, variables)``. Either may be None to skip those metrics.
  ``num_threads`` grain threads decode and resize ``prefetch`` images (default two batches) ahead of
  the devices (:func:`~maskbit_jax.data.sources.eval_dataset`).
  Returns a dict of metrics with ``num_images`` and ``complete``.
  """
  check_batch_size(batch_size)
  _, batch_sh = _mesh_and_batch_sharding()
  total = len(source) if num_images is None else min(num_images, len(source))
  if total < 2 and inception is not None:
    raise ValueError(f"rFID needs at least 2 images, the data has {total}")

  step = tokenizer_eval_step(tok, inception, lpips)
  real_stats, fake_stats = FeatureStats(), FeatureStats()
  inception_score = InceptionScore()
  names = RECONSTRUCTION_METRICS + (("LPIPS",) if lpips is not None else ())
  recon = ReconstructionMetrics(names)
  codebook = CodebookStats(tok.codebook_size)
  start, done, complete = time.perf_counter(), 0, False
  progress = Progress(total) if progress else None

  def dispatch(batch):
    images = jax.device_put(batch["image"].astype(np.float32), batch_sh(4))
    return step(tok.params, inception and inception[1], lpips and lpips[1], images)

  batches = eval_dataset(source, batch_size, num=total, process_index=jax.process_index(),
                         process_count=jax.process_count(), num_threads=num_threads, prefetch=prefetch)
  try:
    for batch, out in distributed.one_batch_behind(batches, dispatch):
      mask = batch["mask"]
      extra = {"LPIPS": out["lpips"]} if lpips is not None else None
      recon.update_per_image(dict(out["per_image"], **(extra or {})), mask=mask)
      codebook.update(out["indices"], mask=mask)
      if inception is not None:
        real_stats.update(out["real_2048"], mask=mask)
        fake_stats.update(out["fake_2048"], mask=mask)
        inception_score.update(out["fake_logits"], mask=mask)
      done += int(mask.sum()) * jax.process_count()
      if progress:
        progress.update(min(done, total))
    complete = True
  except KeyboardInterrupt:
    print("interrupted: the partial metrics are written with complete=false", flush=True)
  recon, codebook = accumulator.allgather_merge(recon), accumulator.allgather_merge(codebook)
  result = dict(recon.compute())
  result.update({"CodebookUsage": codebook.usage(), "CodebookEntropy": codebook.entropy()})
  if inception is not None:
    real_stats, fake_stats = accumulator.allgather_merge(real_stats), accumulator.allgather_merge(fake_stats)
    inception_score = accumulator.allgather_merge(inception_score)
    result["rFID"] = fid_from_stats(real_stats, fake_stats)
    result["InceptionScore"] = inception_score.compute()
  result["num_images"] = int(recon.count)
  result["complete"] = complete
  result["seconds"] = round(time.perf_counter() - start, 3)
  return result


# -- generator ---------------------------------------------------------------------------

def class_balanced_labels(num_images: int, num_classes: int) -> np.ndarray:
  """0, 1, ..., num_classes-1, 0, 1, ...: every class equally often (up to one) for any count."""
  return (np.arange(num_images) % num_classes).astype(np.int32)


def generation_batch_indices(mine: np.ndarray, b: int, batch_size: int) -> tuple[np.ndarray, int]:
  """Global image indices of this process's batch ``b`` (padded to ``batch_size``) and how many are real.

  Padding repeats the batch's last index, or image 0 when the process has no image left (or none at all:
  more processes than images); padded rows are masked out, so every process runs the same number of
  batches (collectives stay aligned) and every image is counted exactly once.
  """
  idx = np.asarray(mine[b * batch_size:(b + 1) * batch_size], np.int64)
  valid = len(idx)
  filler = idx[-1:] if valid else np.asarray(mine[:1] if len(mine) else [0], np.int64)
  return np.concatenate([idx, np.repeat(filler, batch_size - valid)]), valid


def generator_num_classes(gen) -> int:
  """Classes of a generator of any family (``protocols.Generator.num_classes``)."""
  return int(gen.num_classes)


def process_generation_batches(num_images: int, batch_size: int, process_index: int,
                               process_count: int) -> list[int]:
  """Global batch ids process ``process_index`` runs, one per step: batch ``g`` holds images
  ``[g * batch_size, (g + 1) * batch_size)``, and step ``s`` of process ``p`` is batch ``s * process_count + p``.

  Every process runs the same number of steps (ids past the last batch are all padding), so collectives stay
  aligned; step ``s`` of processes 0, 1, ... covers consecutive images, so gathering a step over the processes
  gives the samples in class-balanced order. A batch's images and key depend on ``g`` alone: the samples (and
  FID) do not depend on the process count, only on ``batch_size``.
  """
  return distributed.process_batch_ids(-(-num_images // batch_size), process_index, process_count)


def merge_is_parts(parts: list) -> InceptionScoreSplits:
  """ADM Inception Score splits from per-split accumulators (``parts[k]``: this process's images of global
  split ``k``), merged over processes: split ``k`` holds the images ``[k * S, (k + 1) * S)`` of the sample
  order whichever process made them, so the score equals one process's on the same samples."""
  counts, sums, plogp = [], [], []
  for part in parts:
    state = accumulator.allgather_merge(part).state_dict()
    if not state["split_counts"].sum():  # a split an interrupted run never reached
      continue
    counts.append(int(state["split_counts"].sum()))
    sums.append(state["split_prob_sums"].sum(axis=0))
    plogp.append(float(state["split_plogp"].sum()))
  if not counts:
    return InceptionScoreSplits()
  return InceptionScoreSplits().with_state(dict(split_counts=np.asarray(counts, np.int64),
                                                  split_prob_sums=np.stack(sums), split_plogp=np.asarray(plogp)))


def evaluate_generator(gen, tok, *, num_images: int, batch_size: int, seed: int, inception, ref_stats=None,
                       samples_npz: str | None = None, settings: dict | None = None, progress: bool = True) -> dict:
  """Generates ``num_images`` class-balanced samples; FID (vs ``ref_stats`` = (mu, sigma)) and IS.

  ``gen``, ``tok``: a MaskBit generator and tokenizer, or a BAR generator and the tokenizer its bits decode
  with (``maskbit_jax.sample`` serves every family). ``settings``: sampling overrides on top of the model
  config's evaluation settings. ``samples_npz``: process 0 writes every process's samples there, one ADM
  ``.npz`` in class-balanced order (each step's images are gathered over the processes).
  """
  check_batch_size(batch_size)
  if num_images < 2:
    raise ValueError(f"FID needs at least 2 images, asked for {num_images}")
  _, batch_sh = _mesh_and_batch_sharding()
  labels_all = class_balanced_labels(num_images, generator_num_classes(gen))
  everything = np.arange(num_images)
  count, me = jax.process_count(), jax.process_index()
  features = jax.jit(lambda v, x: inception[0].apply(v, to_uint8(x)))
  stats = FeatureStats()
  split = ADM_IS_SPLIT_SIZE
  is_parts = [InceptionScoreSplits(split) for _ in range(-(-num_images // split))]
  key = jax.random.key(seed)
  writer = None
  start, complete = time.perf_counter(), False
  progress = Progress(num_images) if progress else None
  try:
    for step, g in enumerate(process_generation_batches(num_images, batch_size, me, count)):
      padded, valid = generation_batch_indices(everything, g, batch_size)
      labels = jax.device_put(labels_all[padded], batch_sh(1))
      # one key per batch, from the global index of its first image: batches are disjoint, so no two
      # batches share a key, whichever process runs them; the samples do depend on the batch size
      out = sampling_api.sample(gen, tok, labels, jax.random.fold_in(key, int(padded[0])), **(settings or {}))
      images = out["images"]
      feats = jax.device_get(features(inception[1], images))
      mask = np.arange(batch_size) < valid
      stats.update(feats["2048"], mask=mask)
      for k in np.unique(padded[:valid] // split):
        is_parts[k].update(feats["logits_unbiased"], mask=mask & (padded // split == k))
      if samples_npz:
        u8 = np.asarray(jax.device_get(to_uint8(images)))
        if count > 1:  # every process's batch of this step, in process order = image order
          u8 = np.asarray(multihost_utils.process_allgather(u8)).reshape(count * batch_size, *u8.shape[1:])
          rows = [p * batch_size + r for p in range(count)
                  for r in range(generation_batch_indices(everything, step * count + p, batch_size)[1])]
          u8 = u8[rows]
        else:
          u8 = u8[:valid]
        if me == 0:
          if writer is None:
            writer = AdmSamplesWriter(samples_npz, num_images, u8.shape[1], u8.shape[2], u8.shape[3])
          if len(u8):
            writer.write(u8)
      if progress:
        progress.update(min((step + 1) * batch_size * count, num_images))
    complete = True
  except KeyboardInterrupt:
    print("interrupted: the partial metrics are written with complete=false", flush=True)
  finally:
    if writer is not None:
      if complete:
        writer.close()
      else:
        writer.__exit__(KeyboardInterrupt, None, None)
  stats = accumulator.allgather_merge(stats)
  is_splits = merge_is_parts(is_parts)
  result = dict(num_images=int(stats.count), InceptionScore=is_splits.compute(), complete=complete,
                seconds=round(time.perf_counter() - start, 3))
  if ref_stats is not None:
    result["FID"] = fid_from_stats(stats, ref_stats)
  return result


# -- the metrics' networks --------------------------------------------------------------

def load_inception(path: str, precision: str | None):
  """The FID Inception network and its weights (a published file; ``precision`` "highest" or the default)."""
  module = InceptionV3(precision=jax.lax.Precision.HIGHEST if precision == "highest" else None)
  return module, jax.tree.map(jnp.asarray, load_inception_params(path, module=module))


def load_lpips(path: str, trunk: str | None):
  """The LPIPS network and its weights (``trunk``: the VGG16 file when ``path`` holds the heads only)."""
  module = LPIPS()
  return module, jax.tree.map(jnp.asarray, load_lpips_params(path, trunk, model=module))


