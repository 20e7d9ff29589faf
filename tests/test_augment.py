"""Image preprocessing (``maskbit_jax.data.augment``): torchvision's crop rules, the reference's train
transform, ADM's centre crop (BAR), and the config checks."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from maskbit_jax.data import augment
from maskbit_jax.data.sources import AdmCropSource, SyntheticSource


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(300, 200), (37, 41), (480, 360)])
def test_random_resized_crop_box_obeys_scale_and_ratio(shape):
  h, w = shape
  scale, ratio = (0.3, 1.0), augment.ASPECT_RANGE
  for seed in range(300):
    top, left, ch, cw = augment.random_resized_crop_box(h, w, np.random.default_rng(seed), scale, ratio)
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    # the box has the drawn area and ratio up to the rounding of its sides
    assert scale[0] * h * w - (ch + cw + 1) <= ch * cw <= scale[1] * h * w + (ch + cw + 1)
    assert ratio[0] * (1 - 2 / min(ch, cw)) <= cw / ch <= ratio[1] * (1 + 2 / min(ch, cw))
  # the same generator state gives the same box (a pipeline position always crops alike)
  boxes = [augment.random_resized_crop_box(h, w, np.random.default_rng(7), scale, ratio) for _ in range(2)]
  assert boxes[0] == boxes[1]


def test_random_resized_crop_box_on_a_strip_falls_back_every_time():
  """64x480: no box of ratio <= 4/3 with 30 % of the area fits, so every draw is the clamped centre crop."""
  fallback = ((64 - 64) // 2, (480 - 85) // 2, 64, 85)  # h = 64, w = round(64 * 4/3)
  for seed in range(50):
    assert augment.random_resized_crop_box(64, 480, np.random.default_rng(seed), (0.3, 1.0),
                                           augment.ASPECT_RANGE) == fallback


def test_random_resized_crop_box_fallback_is_torchvisions_centre_crop():
  """A ratio range the image can never meet: ten failed tries, then the clamped-ratio centre crop."""
  rng = np.random.default_rng(0)
  # a tall 100x10 image with ratio forced to 4: no box of that ratio fits -> w = 10, h = round(10 / 4)
  assert augment.random_resized_crop_box(100, 10, rng, (0.9, 1.0), (4.0, 4.0)) == ((100 - 2) // 2, 0, 2, 10)
  # a wide 10x100 image with ratio forced to 1/4 -> h = 10, w = round(10 / 4)
  assert augment.random_resized_crop_box(10, 100, rng, (0.9, 1.0), (0.25, 0.25)) == (0, (100 - 2) // 2, 10, 2)


def test_resize_center_crop_shapes_and_identity():
  img = _image(48, 48)
  np.testing.assert_array_equal(augment.resize_center_crop(img, 48), img)  # nothing to resize or cut
  out = augment.resize_center_crop(_image(60, 90), 30)
  assert out.shape == (30, 30, 3) and out.dtype == np.uint8
  # the shorter side becomes 30 and the centre is kept: a wide image whose middle third is white
  wide = np.zeros((30, 90, 3), np.uint8)
  wide[:, 30:60] = 255
  np.testing.assert_array_equal(augment.resize_center_crop(wide, 30), np.full((30, 30, 3), 255, np.uint8))


def test_train_transform_flips_about_half_and_is_deterministic():
  img = _image(40, 56)
  outs = [augment.train_transform(img, 32, np.random.default_rng(s), use_random_crop=False) for s in range(200)]
  base = augment.train_transform(img, 32, np.random.default_rng(0), use_random_crop=False, random_flip=False)
  flipped = sum(np.array_equal(o, base[:, ::-1]) for o in outs)
  assert all(np.array_equal(o, base) or np.array_equal(o, base[:, ::-1]) for o in outs)
  assert 70 <= flipped <= 130  # p = 1/2 over 200 draws (binomial sd ~7)
  a = augment.train_transform(img, 32, np.random.default_rng(3), min_scale=0.5)
  b = augment.train_transform(img, 32, np.random.default_rng(3), min_scale=0.5)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (32, 32, 3) and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
  with pytest.raises(ValueError, match="uint8"):
    augment.train_transform(img.astype(np.float32), 32, np.random.default_rng(0))


@pytest.mark.parametrize("bad, match", [
    (dict(resolution=4), "resolution"),
    (dict(min_scale=0.0), "min_scale"),
    (dict(min_scale=1.5), "min_scale"),
    (dict(use_random_crop=False, min_scale=0.8), "without use_random_crop"),
    (dict(interpolation="cubicle"), "interpolation"),
])
def test_check_preprocessing_names_the_bad_value(bad, match):
  with pytest.raises(ValueError, match=match):
    augment.check_preprocessing(ml_collections.ConfigDict(bad))


def test_adm_center_crop_halves_with_a_box_filter_then_crops_the_centre():
  small = _image(16, 16, seed=1)
  np.testing.assert_array_equal(augment.adm_center_crop(small, 16), small)  # already the size
  # every pixel a 4x4 block: two box halvings give the original back exactly, the bicubic step is 1:1
  big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)
  np.testing.assert_array_equal(augment.adm_center_crop(big, 16), small)
  # non-square 96 x 192 at size 24: halved while the shorter side >= 48 (96 -> 48 -> 24, exact for 4x4
  # blocks), resized 1:1, then the centre 24 of 48 columns
  wide = np.repeat(np.repeat(_image(24, 48, seed=2), 4, axis=0), 4, axis=1)
  out = augment.adm_center_crop(wide, 24)
  np.testing.assert_array_equal(out, _image(24, 48, seed=2)[:, 12:36])
  odd = augment.adm_center_crop(_image(50, 77), 32)
  assert odd.shape == (32, 32, 3) and odd.dtype == np.uint8


def test_adm_crop_source_crops_the_stored_pixels():
  src = SyntheticSource(3, 32)
  adm = AdmCropSource(src, 32)
  assert len(adm) == 3
  for i in range(3):
    ex = adm[i]
    assert ex["image"].dtype == np.float32 and ex["image"].shape == (32, 32, 3)
    np.testing.assert_array_equal(ex["image"], src.raw(i)["image"].astype(np.float32) / 255.0)
    assert ex["label"] == src[i]["label"]
  with pytest.raises(TypeError, match="raw"):
    AdmCropSource([{"image": 0}], 32)
