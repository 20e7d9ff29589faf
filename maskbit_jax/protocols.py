"""What every tokenizer and every generator offers, whichever family it is of (MaskBit, BAR, a user's).

One vocabulary across the families: ``token_bits`` (K, bits per token), ``num_classes``, ``token_grid``;
images are float32 NHWC in [0, 1]; bits are int32 {0, 1} ``[B, h, w, K]`` with bit j of weight 2^j (LFQ
channel j), tokens int32 ``[B, h, w]``. ``family`` names the model's entry in ``maskbit_jax.registry``, which
is how ``maskbit_jax.sample`` and the commands find its sampler, loader and converter.

Both are runtime-checkable and structural: a user's family needs no base class.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
  """Images <-> tokens <-> bits.

  ``image_size``: the one image side it takes (BAR-FSQ's decoder makes one grid), or None where any
  multiple of ``latent_stride`` works (MaskBit's convolutional tokenizers).
  """

  family: str
  params: Any

  @property
  def token_bits(self) -> int: ...

  @property
  def latent_stride(self) -> int: ...

  @property
  def image_size(self) -> int | None: ...

  def token_grid(self, image_size: int | None = None) -> tuple[int, int]:
    """``(h, w)`` of the tokens of ``image_size``-pixel images (a fixed-size tokenizer ignores it)."""

  def encode(self, images) -> Any:
    """images ``[B, H, W, 3]`` in [0, 1] -> int32 tokens ``[B, h, w]``."""

  def encode_bits(self, images) -> Any:
    """images -> int32 bits ``[B, h, w, K]``."""

  def decode_tokens(self, tokens) -> Any:
    """tokens ``[B, h, w]`` -> images ``[B, H, W, 3]`` in [0, 1] (not clamped)."""

  def bits_to_images(self, bits) -> Any:
    """bits ``[B, h, w, K]`` -> images ``[B, H, W, 3]`` in [0, 1] (not clamped)."""


@runtime_checkable
class Generator(Protocol):
  """Class-conditional token generation; ``maskbit_jax.sample(gen, tok, labels, key)`` runs its family's
  sampler."""

  family: str
  config: Any
  params: Any

  @property
  def num_classes(self) -> int: ...

  @property
  def token_bits(self) -> int: ...

  @property
  def sampling_defaults(self) -> dict:
    """The released evaluation settings of its config, as ``sample`` takes them."""

  def check_labels(self, labels) -> Any:
    """``labels`` as a checked 1-D integer array of class ids in ``[0, num_classes)``."""


__all__ = ["Generator", "Tokenizer"]
