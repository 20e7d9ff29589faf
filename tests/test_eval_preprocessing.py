"""Evaluation images are preprocessed as the reference's ``eval_transform``: torchvision ``Resize(size,
interpolation)`` of the shorter side on PIL, then ``CenterCrop(size)`` (MaskBit, BAR); BAR's pretokenizing
uses ADM's ``center_crop_arr``. Both are recomputed here with PIL alone and compared on every pixel of the
embedded photos (sizes and aspect ratios that exercise torchvision's truncated long side and its rounded,
half-to-even crop offsets, and ADM's box halvings)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskbit_jax import image_io
from maskbit_jax.data import sources
from maskbit_jax.data.sample_images import PHOTOS, photo_arrays, sample_photos

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
SIZES = (64, 37)


def _torchvision_eval(image: np.ndarray, size: int, interpolation: str) -> np.ndarray:
  """``Resize(size)`` + ``CenterCrop(size)`` + ``ToTensor`` as torchvision computes them on a PIL image."""
  im = Image.fromarray(image)
  w, h = im.size
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = size, int(size * long / short)  # torchvision: the long side truncated
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  if (new_w, new_h) != (w, h):
    im = im.resize((new_w, new_h), FILTERS[interpolation])
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # CenterCrop's offsets
  return np.asarray(im.crop((left, top, left + size, top + size))).astype(np.float32) / np.float32(255.0)


def _adm_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """guided-diffusion's ``center_crop_arr``: BOX halvings while the short side >= 2 size, BICUBIC to the
  short side = size (each side rounded), the centre square (offsets floored)."""
  im = Image.fromarray(image)
  while min(im.size) >= 2 * size:
    im = im.resize(tuple(x // 2 for x in im.size), resample=Image.Resampling.BOX)
  scale = size / min(im.size)
  im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.Resampling.BICUBIC)
  arr = np.array(im)
  y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return arr[y:y + size, x:x + size].astype(np.float32) / np.float32(255.0)


@pytest.fixture(scope="module")
def photos():
  return photo_arrays()


@pytest.fixture(scope="module")
def photo_folder(photos, tmp_path_factory):
  folder = tmp_path_factory.mktemp("photos")
  for name, im in zip(PHOTOS, photos):
    Image.fromarray(im).save(folder / f"{name}.png")
  return folder


def test_the_photos_exercise_the_rounding(photos):
  """Not all square, and among the crops offsets x.5 rounded both ways (half to even)."""
  halves = set()
  for im in photos:
    h, w = im.shape[:2]
    short, long = min(h, w), max(h, w)
    for size in SIZES:
      new_long = int(size * long / short)
      if (new_long - size) % 2:
        halves.add(int(round((new_long - size) / 2.0)) - (new_long - size) // 2)
  assert halves == {0, 1}


@pytest.mark.parametrize("interpolation", sorted(FILTERS))
@pytest.mark.parametrize("size", SIZES)
def test_every_reader_preprocesses_as_the_reference(photos, photo_folder, size, interpolation):
  want = np.stack([_torchvision_eval(im, size, interpolation) for im in photos])
  src = sources.make_source("photos", size, interpolation=interpolation)
  np.testing.assert_array_equal(np.stack([src[i]["image"] for i in range(len(src))]), want)
  np.testing.assert_array_equal(sample_photos(size, interpolation=interpolation)[0], want)
  folder = sources.make_source(str(photo_folder), size, interpolation=interpolation)
  order = [PHOTOS.index(path.rsplit("/", 1)[-1][:-4]) for path, _ in folder.items]
  np.testing.assert_array_equal(np.stack([folder[i]["image"] for i in range(len(folder))]), want[order])
  loaded, names = image_io.load_image_folder(str(photo_folder), size, interpolation)
  np.testing.assert_array_equal(loaded, want[[PHOTOS.index(n[:-4]) for n in names]])
  tfds = sources.TfdsSource.__new__(sources.TfdsSource)  # a tfds split's decoded examples, without tfds
  tfds.source, tfds.size, tfds.interpolation = [{"image": im, "label": 3} for im in photos], size, interpolation
  np.testing.assert_array_equal(np.stack([tfds[i]["image"] for i in range(len(photos))]), want)


@pytest.mark.parametrize("size", SIZES)
def test_adm_crop_is_guided_diffusions(photos, size):
  adm = sources.AdmCropSource(sources.PhotoSource(size), size)
  for i, im in enumerate(photos):
    np.testing.assert_array_equal(adm[i]["image"], _adm_center_crop(im, size))


def test_photo_source_raw_is_the_stored_photo(photos):
  src = sources.PhotoSource(32)
  for i, im in enumerate(photos):
    np.testing.assert_array_equal(src.raw(i)["image"], im)


def test_eval_interpolation_follows_the_config():
  assert sources.eval_interpolation({}) == "bilinear"  # torchvision's and the reference reader's default
  assert sources.eval_interpolation({"dataset": {"preprocessing": {"interpolation": "bicubic"}}}) == "bicubic"
  assert sources.eval_interpolation({"dataset": {"preprocessing": {"crop_size": 256}}}) == "bicubic"  # BAR
  with pytest.raises(ValueError, match="interpolation"):
    sources.eval_interpolation({"dataset": {"preprocessing": {"interpolation": "cubicle"}}})
  with pytest.raises(ValueError, match="interpolation"):
    sources.make_source("photos", 32, interpolation="cubicle")


@pytest.mark.parametrize("cli", ["evaluate", "pretokenize"])
def test_the_clis_pass_the_configs_interpolation(cli, monkeypatch, tmp_path):
  from conftest import REPO

  seen = {}

  class Stop(Exception):
    pass

  def fake_make_source(spec, size, **kw):
    seen.update(kw, spec=spec, size=size)
    raise Stop

  monkeypatch.setattr(sources, "make_source", fake_make_source)
  config = ["--config", str(REPO / "configs/tokenizer_tiny.py"), "--config.dataset.preprocessing.interpolation=bicubic"]
  if cli == "evaluate":
    from maskbit_jax.cli.evaluate import main

    args = ["tokenizer", *config, "--random_init", "--skip", "fid,lpips", "--data", "photos"]
  else:
    from maskbit_jax.cli.pretokenize import main

    args = [*config, "--random_init", "--data", "photos", "--out", str(tmp_path / "t")]
  with pytest.raises(Stop):
    main(args)
  assert seen["interpolation"] == "bicubic" and seen["spec"] == "photos"
