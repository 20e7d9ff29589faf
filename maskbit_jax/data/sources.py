"""Random-access image sources (grain-compatible: ``__len__`` and ``__getitem__``) and exact eval batching.

Every source yields ``{"image": float32 [H, W, 3] in [0, 1], "label": int32}``
preprocessed at ``size`` as the reference evaluates (``Resize`` of the shorter
side with the config's interpolation, ``CenterCrop``: ``sample_images.eval_preprocess``),
and ``raw(index)`` gives
``{"image": uint8 [H, W, 3] at the stored size, "label"}`` for training
augmentation. Images of any common mode are read as 8-bit RGB (16-bit ones
scaled, ``image_io.read_rgb``); a file that cannot be decoded, or whose mode
has no 8-bit reading, raises :class:`CorruptImageError` naming it.

* ``ImageFolderSource``: ``root/<class_name>/<image>`` (classes in sorted order,
  like torchvision's ImageFolder), or a flat folder (label 0).
* ``SyntheticSource``: the embedded deterministic labelled set.
* ``PhotoSource``: the embedded photos (label 0).
* ``TfdsSource``: a tensorflow-datasets split through ``tfds.data_source``
  (ArrayRecord; e.g. ``imagenet2012``), decoded, resized and centre-cropped.
* ``AdmCropSource``: another source's images through ADM's centre crop (BAR's
  pretokenizing) instead.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import numpy as np

from maskbit_jax.data import augment
from maskbit_jax.data.sample_images import PHOTOS, eval_preprocess, photo_arrays, synthetic_images
from maskbit_jax.image_io import IMAGE_SUFFIXES, CorruptImageError, array_to_rgb_uint8, read_rgb, to_uint8
from maskbit_jax.tensorflow_guard import tensorflow_on_cpu_only

__all__ = ["AdmCropSource", "CorruptImageError", "ImageFolderSource", "PhotoSource", "SyntheticSource",
           "RandomResizedCropsSource", "TfdsSource", "eval_batches", "eval_dataset", "eval_interpolation",
           "eval_rows", "make_source", "num_eval_batches", "shard_indices"]


def eval_interpolation(cfg) -> str:
  """The resize filter the reference evaluates ``cfg``'s images with: MaskBit's ``Resize`` takes
  ``dataset.preprocessing.interpolation`` (bilinear when unset, its default); BAR's configs (``crop_size``, no
  interpolation) evaluate bicubic, as BAR's ``eval_transform`` hard-codes."""
  pre = (cfg.get("dataset", {}) or {}).get("preprocessing", {}) or {}
  name = pre.get("interpolation")
  if name is None:
    name = "bicubic" if "crop_size" in pre else "bilinear"
  augment.interpolation(str(name))
  return str(name)


class ImageFolderSource:
  def __init__(self, root: str, size: int, interpolation: str = "bilinear"):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"image folder not found: {root}")
    self.size, self.interpolation = size, interpolation
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if classes:
      self.classes = classes
      self.items = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
                    for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(IMAGE_SUFFIXES)]
    else:
      self.classes = [""]
      self.items = [(os.path.join(root, f), 0) for f in sorted(os.listdir(root)) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not self.items:
      raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")

  def __len__(self) -> int:
    return len(self.items)

  def raw(self, index: int) -> dict:
    path, label = self.items[index]
    return {"image": read_rgb(path), "label": np.int32(label)}

  def __getitem__(self, index: int) -> dict:
    ex = self.raw(index)
    return {"image": eval_preprocess(ex["image"], self.size, self.interpolation), "label": ex["label"]}


class SyntheticSource:
  def __init__(self, num: int, size: int, seed: int = 0):
    self.num, self.size, self.seed = num, size, seed

  def __len__(self) -> int:
    return self.num

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num:
      raise IndexError(index)
    images, labels = synthetic_images(1, self.size, seed=self.seed, first_index=index)
    return {"image": images[0], "label": labels[0]}

  def raw(self, index: int) -> dict:
    ex = self[index]
    return {"image": to_uint8(ex["image"]), "label": ex["label"]}


class PhotoSource:
  def __init__(self, size: int, interpolation: str = "bilinear"):
    self.size, self.interpolation = size, interpolation
    self.photos, self.names = photo_arrays(), list(PHOTOS)

  def __len__(self) -> int:
    return len(self.photos)

  def __getitem__(self, index: int) -> dict:
    return {"image": eval_preprocess(self.photos[index], self.size, self.interpolation), "label": np.int32(0)}

  def raw(self, index: int) -> dict:
    return {"image": self.photos[index], "label": np.int32(0)}  # the stored photo, as for the other sources


# tfds reads a prepared ArrayRecord split with numpy alone; preparing one (and some feature types) needs TensorFlow
TENSORFLOW_FOR_TFDS = "this needs TensorFlow: pip install 'maskbit_jax[tensorboard]' (or tensorflow)"


class TfdsSource:
  def __init__(self, name: str, split: str, size: int, data_dir: str | None = None,
               interpolation: str = "bilinear"):
    tensorflow_on_cpu_only()  # tensorflow-datasets imports TensorFlow
    import tensorflow_datasets as tfds

    self.size, self.interpolation = size, interpolation
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    except ImportError as e:  # tfds imports its dataset code lazily: a missing module is no missing dataset
      raise ImportError(f"tensorflow-datasets could not open {name!r}: a module it imports is missing ({e}); "
                        + (TENSORFLOW_FOR_TFDS if (e.name or "").split(".")[0] == "tensorflow" else
                           "reinstall this package's dependencies (pip install -e .)")) from e
    except Exception as e:  # tfds raises several types for a dataset that is not prepared
      raise FileNotFoundError(
          f"tensorflow-datasets {name!r} split {split!r} is not available under "
          f"{data_dir or '~/tensorflow_datasets'} ({e}); prepare it once with tfds (ArrayRecord format; "
          f"preparing needs TensorFlow, reading does not)") from e

  def __len__(self) -> int:
    return len(self.source)

  def raw(self, index: int) -> dict:
    ex = self.source[index]
    image, name = ex["image"], f"example {index} of the tfds source"
    if isinstance(image, (bytes, bytearray)):
      image = read_rgb(io.BytesIO(image), name)
    # not np.asarray(image, np.uint8): that would wrap 16-bit pixels around instead of scaling them
    image = array_to_rgb_uint8(image, name)
    return {"image": image, "label": np.int32(ex.get("label", 0))}

  def __getitem__(self, index: int) -> dict:
    ex = self.raw(index)
    return {"image": eval_preprocess(ex["image"], self.size, self.interpolation), "label": ex["label"]}


def make_source(spec: str, size: int, *, seed: int = 0, interpolation: str = "bilinear"):
  """``photos``, ``synthetic:N[:SEED]``, ``tfds:NAME:SPLIT[:DATA_DIR]`` or a folder path.

  ``synthetic:N:SEED`` picks another seed of the synthetic set (e.g. held-out
  images that never appear in ``synthetic:N``). ``interpolation``: the resize
  filter of the evaluation preprocessing (:func:`eval_interpolation` of the
  config); the synthetic set is drawn at ``size`` and never resized.
  """
  augment.interpolation(interpolation)
  if spec == "photos":
    return PhotoSource(size, interpolation)
  if spec.startswith("synthetic:"):
    parts = spec.split(":")
    try:
      num = int(parts[1])
      seed = int(parts[2]) if len(parts) > 2 else seed
    except (ValueError, IndexError):
      raise ValueError(f"data source {spec!r}: use synthetic:N or synthetic:N:SEED") from None
    if num < 1 or len(parts) > 3:
      raise ValueError(f"data source {spec!r}: use synthetic:N or synthetic:N:SEED with N >= 1")
    return SyntheticSource(num, size, seed)
  if spec.startswith("tfds:"):
    parts = spec.split(":")
    if len(parts) < 3:
      raise ValueError(f"--data {spec!r}: use tfds:NAME:SPLIT[:DATA_DIR]")
    return TfdsSource(parts[1], parts[2], size, parts[3] if len(parts) > 3 else None, interpolation)
  return ImageFolderSource(spec, size, interpolation)


def shard_indices(num: int, process_index: int, process_count: int) -> np.ndarray:
  """The indices process ``process_index`` owns: a contiguous block, sizes differing by at most one."""
  bounds = np.linspace(0, num, process_count + 1).round().astype(int)
  return np.arange(bounds[process_index], bounds[process_index + 1])


def num_eval_batches(num: int, batch_size: int, process_count: int) -> int:
  """Batches every process runs so that the largest shard of ``num`` examples fits."""
  largest = -(-num // process_count)
  return -(-largest // batch_size)


def eval_batches(source, batch_size: int, *, num: int | None = None, process_index: int = 0,
                 process_count: int = 1, num_batches: int | None = None) -> Iterator[dict]:
  """Batches of this process's shard, the last one padded, with ``mask`` True for real examples.

  Every process yields the same number of batches (``num_batches``, default
  computed from the largest shard) so collective evaluation steps line up;
  padding rows repeat the last example and carry mask False, so every image is
  counted exactly once over all processes.
  """
  num = len(source) if num is None else min(num, len(source))
  mine = shard_indices(num, process_index, process_count)
  if num_batches is None:
    num_batches = num_eval_batches(num, batch_size, process_count)
  for b in range(num_batches):
    idx = mine[b * batch_size:(b + 1) * batch_size]
    examples = [source[int(i)] for i in idx]
    valid = len(examples)
    if valid == 0:
      examples = [source[0]]
    filler = [examples[-1]] * (batch_size - len(examples))
    batch = {k: np.stack([e[k] for e in examples + filler]) for k in examples[0]}
    batch["mask"] = np.arange(batch_size) < valid
    yield batch


def eval_rows(num: int, batch_size: int, *, process_index: int = 0, process_count: int = 1,
              num_batches: int | None = None) -> list[tuple[int, bool]]:
  """``(source index, real)`` of every row of this process's :func:`eval_batches`, in order: a padding row
  repeats its batch's last index (image 0 in a batch with none), with ``real`` False."""
  mine = shard_indices(num, process_index, process_count)
  if num_batches is None:
    num_batches = num_eval_batches(num, batch_size, process_count)
  rows = []
  for b in range(num_batches):
    idx = [int(i) for i in mine[b * batch_size:(b + 1) * batch_size]]
    filler = idx[-1] if idx else 0
    rows += [(i, True) for i in idx] + [(filler, False)] * (batch_size - len(idx))
  return rows


def eval_dataset(source, batch_size: int, *, num: int | None = None, process_index: int = 0,
                 process_count: int = 1, num_batches: int | None = None, num_threads: int = 4,
                 prefetch: int | None = None):
  """:func:`eval_batches` (the same batches, values and ``mask``) read by a grain pipeline: ``num_threads``
  threads decode and resize ``prefetch`` examples (default two batches) ahead of the consumer."""
  import grain  # here, not at the top: importing it takes seconds, and the sources need it only for this

  num = len(source) if num is None else min(num, len(source))
  rows = eval_rows(num, batch_size, process_index=process_index, process_count=process_count,
                   num_batches=num_batches)
  if not rows:
    return iter(())

  def load(row):
    index, real = row
    return dict(source[index], mask=np.bool_(real))

  options = grain.ReadOptions(num_threads=max(1, num_threads),
                              prefetch_buffer_size=max(1, 2 * batch_size if prefetch is None else prefetch))
  ds = grain.MapDataset.source(rows).map(load).to_iter_dataset(options)
  return ds.batch(batch_size, drop_remainder=True)


class AdmCropSource:
  """``source`` with every image cropped by :func:`~maskbit_jax.data.augment.adm_center_crop` from its
  stored pixels (``source.raw``) instead of the plain centre crop: BAR's preprocessing."""

  def __init__(self, source, size: int):
    if not hasattr(source, "raw"):
      raise TypeError(f"{type(source).__name__} has no raw(index): cannot re-crop its images")
    self.source, self.size = source, size

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    ex = self.source.raw(index)
    image = augment.adm_center_crop(ex["image"], self.size).astype(np.float32) / 255.0
    return {"image": image, "label": ex["label"]}


class RandomResizedCropsSource:
  """``crops`` training crops of every image of ``source`` (``RandomResizedCrop`` of the training recipe,
  ``dataset.preprocessing``: ``min_scale``, ``use_aspect_ratio_aug``, ``interpolation``; no flip), image-major:
  item ``j`` is crop ``j % crops`` of image ``j // crops``, drawn from a generator seeded by
  ``(seed, image, crop)`` alone, so any shard (process) makes the same crops."""

  def __init__(self, source, size: int, crops: int, preprocessing=None, *, seed: int = 0):
    if not hasattr(source, "raw"):
      raise TypeError(f"{type(source).__name__} has no raw(index): cannot crop its stored images")
    if crops < 1:
      raise ValueError(f"crops must be >= 1, got {crops}")
    pre = dict(preprocessing or {})
    augment.check_preprocessing({**pre, "resolution": size})
    if not pre.get("use_random_crop", True):
      raise ValueError("dataset.preprocessing.use_random_crop is False: every crop would be the same centre "
                       "crop; use one crop per image")
    self.source, self.size, self.crops, self.seed = source, size, int(crops), int(seed)
    self.num_images = len(source)
    self.options = dict(use_random_crop=True, use_aspect_ratio_aug=bool(pre.get("use_aspect_ratio_aug", True)),
                        min_scale=float(pre.get("min_scale", 0.8)), interp=str(pre.get("interpolation", "bilinear")),
                        random_flip=False)

  def __len__(self) -> int:
    return self.num_images * self.crops

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(index)
    image, crop = divmod(int(index), self.crops)
    ex = self.source.raw(image)
    rng = np.random.default_rng([self.seed, image, crop])
    return {"image": augment.train_transform(ex["image"], self.size, rng, **self.options), "label": ex["label"]}
