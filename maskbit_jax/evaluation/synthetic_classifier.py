"""A small CNN that tells the 16 classes of the embedded synthetic set apart (shape x hue).

The tiny recipe (configs/tokenizer_tiny.py, configs/generator_tiny.py) trains on
:func:`maskbit_jax.data.sample_images.synthetic_images`; this classifier, trained
on the same set, is how the tiny run shows that its class-conditional samples
have the class they were asked for ("class accuracy"), the way FID's Inception
network judges ImageNet samples. Its weights ship with the package
(``synthetic_classifier.msgpack``, 330 kB), written by :func:`train_classifier`
with the defaults below; the run never downloads or trains anything for it.

Layout: images NHWC float32 in [0, 1]; any square size (resized to ``INPUT_SIZE``).
"""

from __future__ import annotations

import functools
import importlib.resources

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from maskbit_jax.data import sample_images

INPUT_SIZE = 32
NUM_CLASSES = sample_images.NUM_SHAPES * sample_images.NUM_HUES
WEIGHTS_FILE = "synthetic_classifier.msgpack"


class SyntheticClassifier(nn.Module):
  """``[B, INPUT_SIZE, INPUT_SIZE, 3]`` in [0, 1] -> logits ``[B, NUM_CLASSES]``."""

  widths: tuple[int, ...] = (16, 32, 64)

  @nn.compact
  def __call__(self, images_bhwc: jax.Array) -> jax.Array:
    x = images_bhwc * 2.0 - 1.0
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
    # mean and max pooling: the hue is an area statistic, the stripes' edges a local one
    x = jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)
    return nn.Dense(NUM_CLASSES)(nn.relu(nn.Dense(64)(x)))


def _resized(images_bhwc: np.ndarray) -> jax.Array:
  images = jnp.asarray(images_bhwc, jnp.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"the synthetic classifier takes NHWC RGB images, got shape {tuple(images.shape)}")
  if images.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    images = jax.image.resize(images, (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "linear", antialias=True)
  return images


def train_classifier(num_images: int = 8192, steps: int = 1500, batch_size: int = 128, learning_rate: float = 2e-3,
                     seed: int = 0) -> dict:
  """Trains :class:`SyntheticClassifier` on images ``0 .. num_images - 1`` of the synthetic set of ``seed``
  (the tiny recipe trains its models on the first 4096 of seed 0) and returns its params."""
  images, labels = sample_images.synthetic_images(num_images, INPUT_SIZE, seed=seed)
  model = SyntheticClassifier()
  params = model.init(jax.random.key(seed), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))["params"]
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y, key):
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)  # the generators train on flipped images too

    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed + 1)
  for _ in range(steps):
    idx = rng.integers(0, num_images, batch_size)
    key, sub = jax.random.split(key)
    params, opt_state, _ = step(params, opt_state, images[idx], labels[idx], sub)
  return jax.device_get(params)


def save_params(params: dict, path: str) -> None:
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))


@functools.lru_cache(maxsize=1)
def packaged_params() -> dict:
  """The shipped weights (see the module docstring)."""
  data = importlib.resources.files("maskbit_jax.evaluation").joinpath(WEIGHTS_FILE).read_bytes()
  return flax.serialization.msgpack_restore(data)


def predict(images_bhwc: np.ndarray, params: dict | None = None, batch_size: int = 256) -> np.ndarray:
  """Class indices ``[B]`` int32 of images NHWC in [0, 1] (``params``: the packaged weights by default)."""
  params = packaged_params() if params is None else params
  apply = jax.jit(SyntheticClassifier().apply)
  out = [np.asarray(jnp.argmax(apply({"params": params}, _resized(images_bhwc[i:i + batch_size])), axis=-1))
         for i in range(0, len(images_bhwc), batch_size)]
  return np.concatenate(out).astype(np.int32) if out else np.zeros((0,), np.int32)


def class_accuracy(images_bhwc: np.ndarray, labels: np.ndarray, params: dict | None = None) -> float:
  """Fraction of ``images_bhwc`` the classifier assigns to ``labels`` (the class each was generated for)."""
  labels = np.asarray(labels)
  if len(labels) != len(images_bhwc):
    raise ValueError(f"{len(images_bhwc)} images but {len(labels)} labels")
  if len(labels) == 0:
    raise ValueError("class accuracy of no images")
  return float(np.mean(predict(images_bhwc, params) == labels))
