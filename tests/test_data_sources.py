"""Image sources and exact sharded eval batching (no image counted twice, none lost)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskbit_jax.data.sample_images import synthetic_images
from maskbit_jax.data.sources import ImageFolderSource, SyntheticSource, eval_batches, make_source


def test_synthetic_source_matches_the_batch_generator():
  images, labels = synthetic_images(5, 16, seed=2)
  src = SyntheticSource(5, 16, seed=2)
  for i in range(5):
    np.testing.assert_array_equal(src[i]["image"], images[i])
    assert src[i]["label"] == labels[i]


@pytest.mark.parametrize("num, batch, procs", [(10, 4, 1), (10, 4, 3), (7, 2, 4), (3, 8, 2)])
def test_eval_batches_count_every_image_once(num, batch, procs):
  src = SyntheticSource(num, 8, seed=0)
  seen, batch_counts = [], set()
  for p in range(procs):
    batches = list(eval_batches(src, batch, process_index=p, process_count=procs))
    batch_counts.add(len(batches))
    for b in batches:
      assert b["image"].shape == (batch, 8, 8, 3) and b["mask"].shape == (batch,)
      seen += [tuple(img.ravel()[:6]) for img in b["image"][b["mask"]]]
  assert len(batch_counts) == 1  # every process runs the same number of steps
  assert len(seen) == num and len(set(seen)) == num


def test_image_folder_with_classes(tmp_path):
  for c, colour in (("b_cls", 200), ("a_cls", 10)):
    (tmp_path / c).mkdir()
    Image.fromarray(np.full((20, 30, 3), colour, np.uint8)).save(tmp_path / c / "x.png")
  src = make_source(str(tmp_path), 8)
  assert isinstance(src, ImageFolderSource) and src.classes == ["a_cls", "b_cls"]
  ex = src[1]
  assert ex["image"].shape == (8, 8, 3) and ex["label"] == 1 and ex["image"].max() > 0.7
  with pytest.raises(FileNotFoundError):
    make_source(str(tmp_path / "missing"), 8)
  with pytest.raises(ValueError, match="tfds:NAME:SPLIT"):
    make_source("tfds:imagenet2012", 8)


def test_an_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  """The tfds route itself imports (no missing dependency): the error is tfds's own instructions."""
  with pytest.raises(FileNotFoundError) as info:
    make_source(f"tfds:imagenet2012:validation:{tmp_path}", 8)
  text = str(info.value)
  assert "prepare it once" in text and str(tmp_path) in text
  assert "No module named" not in text
