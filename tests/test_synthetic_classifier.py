"""The synthetic-set classifier that judges the tiny run's samples (``evaluation/synthetic_classifier.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from maskbit_jax.data import sample_images
from maskbit_jax.evaluation import synthetic_classifier as sc


def test_packaged_weights_recognise_held_out_images():
  # seed 3: images neither the classifier (seed 0) nor the tiny run's evaluation (seed 1) ever saw
  images, labels = sample_images.synthetic_images(512, sc.INPUT_SIZE, seed=3)
  assert sc.class_accuracy(images, labels) >= 0.97
  # a larger rendering of the same images is resized to the classifier's input
  big, _ = sample_images.synthetic_images(64, 64, seed=3)
  assert np.mean(sc.predict(big) == labels[:64]) >= 0.9


def test_it_is_not_fooled_by_a_wrong_class():
  images, labels = sample_images.synthetic_images(256, sc.INPUT_SIZE, seed=4)
  assert sc.class_accuracy(images, (labels + 1) % sc.NUM_CLASSES) <= 0.05  # each image's neighbour class
  grey = np.full((16, sc.INPUT_SIZE, sc.INPUT_SIZE, 3), 0.5, np.float32)
  assert sc.class_accuracy(grey, np.arange(16)) <= 2 / 16  # one flat image is at most one class


def test_class_names_follow_the_generator():
  assert sample_images.class_name(0) == "red disc"
  assert sample_images.class_name(6) == "green triangle"
  assert sample_images.class_name(15) == "yellow stripes"
  images, labels = sample_images.synthetic_images(64, 32, seed=5)
  for image, label in zip(images, labels):  # the most saturated colour of the image is its shape's hue
    hue = sample_images.class_name(label).split()[0]
    pixels = image.reshape(-1, 3)
    r, g, b = pixels[np.argmax(pixels.max(-1) - pixels.min(-1))]
    assert {"red": r > g and r > b, "green": g > r and g > b, "blue": b > r and b > g,
            "yellow": r > b and g > b}[hue], (label, (r, g, b))
  with pytest.raises(ValueError, match="classes 0..15, got 16"):
    sample_images.class_name(16)


def test_bad_inputs_are_refused():
  images = np.zeros((2, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match="2 images but 3 labels"):
    sc.class_accuracy(images, [0, 1, 2])
  with pytest.raises(ValueError, match="NHWC RGB images"):
    sc.predict(np.zeros((2, 32, 32), np.float32))


@pytest.mark.slow
def test_training_reproduces_the_packaged_accuracy():
  params = sc.train_classifier()
  images, labels = sample_images.synthetic_images(1024, sc.INPUT_SIZE, seed=3)
  assert sc.class_accuracy(images, labels, params) >= 0.98
