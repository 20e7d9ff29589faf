"""The BAR generator: ``load_bar_generator``, ``BarModel`` and its sampler (reached through ``maskbit_jax.sample``).

    gen = load_bar_generator("configs/bar_b.py", "bar_b.bin")
    tok = load_bar_tokenizer("configs/bar_b.py", "bar_fsq_16bits_ft.bin")      # decoder only
    out = maskbit_jax.sample(gen, tok, [207, 360], jax.random.key(0))          # bits, tokens, images in [0, 1]

A BAR generator emits bits ``[B, cells*K]`` (cells row-major, bit j of a cell has weight 2^j). Its tokenizer
(``maskbit_jax.bar_tokenizer_api``) turns them into images: BAR's own binary-FSQ tokenizer (the released
models; its ViT decoder outputs [-1, 1], mapped here to [0, 1]), or a MaskBit lookup-free (VQGAN+)
tokenizer for BAR trained on MaskBit's bit tokens (``configs/bar_tiny.py``,
``configs/bar_on_maskbit_12bit.py``): the bits are packed into LFQ indices (LFQ channel j = bit j) and decoded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from maskbit_jax import (checkpointing, hub,  # (the loaders' ``registry`` argument is the weights registry)
                         registry as families, runtime)
from maskbit_jax.bar_config import SAMPLING_KEYS, bar_fields, bar_sampling_defaults
from maskbit_jax.bar_tokenizer_api import tokenizer_grid
from maskbit_jax.config import ConfigLike, load_config
from maskbit_jax.convert import bar_mapping
from maskbit_jax.generator import check_class_labels
from maskbit_jax.models.bar_fsq import pack_bits
from maskbit_jax.models.bar_generator import BarGenerator, abstract_bar_params, build_bar_module, init_bar_params
from maskbit_jax.sampling.bar_sampler import BarSamplingConfig, generate


@dataclasses.dataclass(frozen=True, eq=False)
class BarModel:
  """A BAR generator with its parameters (``module`` is the flax ``BarGenerator``)."""

  family: ClassVar[str] = "bar_generator"
  config: ml_collections.ConfigDict
  module: BarGenerator
  params: Any

  @property
  def num_classes(self) -> int:
    return self.module.num_classes

  @property
  def token_bits(self) -> int:
    return self.module.token_bits

  @property
  def grid(self) -> tuple[int, int]:
    return tuple(self.module.grid)

  @property
  def sampling_defaults(self) -> dict:
    return bar_sampling_defaults(self.config)

  def check_labels(self, labels) -> np.ndarray:
    return check_class_labels(labels, self.num_classes)


def load_bar_params(checkpoint: str | os.PathLike, module: BarGenerator) -> Any:
  """BAR params from one of our folders or a released PyTorch-format file, strictly."""
  abstract = nn.meta.unbox(abstract_bar_params(module))
  return checkpointing.load_weights(
      checkpoint, abstract, kind=bar_mapping.CHECKPOINT_KIND, mapping=bar_mapping.bar_param_mapping,
      from_state_dict=lambda state, source: bar_mapping.bar_state_to_flax(state, abstract, module, source=source))


def load_bar_generator(config: ConfigLike, checkpoint: str | os.PathLike | None = None, *, random_init: bool = False,
                       seed: int = 0, dtype: str | None = None, precision: str | None = None,
                       overrides=(), registry=None) -> BarModel:
  """Builds the BAR generator of a config and loads its weights.

  ``config``: as ``load_tokenizer`` takes it, or a released name (``"bar_b"``: config and weights).
  ``checkpoint``: a released ``.bin`` or one of our exported folders (a train
  run's ``export/bar_generator``); default ``experiment.generator_checkpoint``.
  ``random_init`` gives untrained weights (smoke tests); never implicit.
  """
  config, checkpoint = hub.resolve_model(config, checkpoint, "bar_generator", random_init=random_init,
                                         registry_override=registry)
  cfg = load_config(config, overrides)
  if families.name_of(cfg) != BarModel.family:
    raise ValueError(f"not a BAR generator config (model.name is {cfg.model.name!r}, not {BarModel.family!r})")
  compute_dtype, prec = runtime.resolve(cfg, dtype, precision)
  module = build_bar_module(bar_fields(cfg), dtype=compute_dtype, precision=prec)
  if checkpoint is None and not random_init:
    checkpoint = (cfg.get("experiment", None) or {}).get("generator_checkpoint") or None
    checkpoint = hub.resolve_checkpoint(checkpoint, "bar_generator", registry)  # the config may name a release
  if checkpoint is None and not random_init:
    raise ValueError("no BAR generator checkpoint given (argument or experiment.generator_checkpoint); "
                     "pass random_init=True (on the command line: --random_init) for untrained weights")
  params = init_bar_params(module, jax.random.key(seed)) if random_init else load_bar_params(checkpoint, module)
  return BarModel(cfg, module, params)


def _resolution(cfg: ml_collections.ConfigDict) -> int | None:
  pre = (cfg.get("dataset", None) or {}).get("preprocessing", None) or {}
  return pre.get("resolution", None)


def _bits_kind(tok) -> str | None:
  """``lfq`` or ``bar_fsq``: how ``tok`` reads bits (its family's ``bits``); None for a tokenizer of no bits."""
  try:
    fam = families.of(tok)
  except (TypeError, ValueError):
    return None
  return fam.bits if fam.role == families.TOKENIZER else None


def check_pair(gen: BarModel, tok) -> None:
  """The generator's bits must be this tokenizer's: same bits per token, same latent grid."""
  if _bits_kind(tok) is None or not getattr(tok, "is_lookup_free", True):
    raise ValueError("BAR decodes bits: pair it with a BAR-FSQ tokenizer or a MaskBit lookup-free (LFQ) one")
  if gen.token_bits != tok.token_bits:
    raise ValueError(f"the BAR generator makes {gen.token_bits}-bit tokens but the tokenizer has "
                     f"{tok.token_bits} bits: pair checkpoints of the same bit width")
  grid = tokenizer_grid(tok, _resolution(gen.config))
  if tuple(grid) != tuple(gen.module.grid):
    raise ValueError(f"the BAR generator's latent grid {gen.module.grid} is not the tokenizer's {grid}")


def bits_to_tokens(bits: jax.Array, grid: tuple[int, int], token_bits: int) -> jax.Array:
  """Bits ``[B, cells*K]`` -> int32 token indices ``[B, h, w]`` (bit j has weight 2^j, as LFQ and BAR-FSQ)."""
  return pack_bits(jnp.asarray(bits).reshape(bits.shape[0], grid[0], grid[1], token_bits))


@functools.partial(jax.jit, static_argnames=("tok_module", "grid", "token_bits", "lfq"))
def _decode(tok_params, bits, *, tok_module, grid, token_bits, lfq):
  tokens = bits_to_tokens(bits, grid, token_bits)
  if lfq:
    return tokens, tok_module.apply({"params": tok_params}, tokens, method="decode_tokens")
  images = tok_module.apply({"params": tok_params}, bits, method="decode_bits")
  return tokens, (images.astype(jnp.float32) + 1.0) / 2.0


def decode_bits(tok, bits, grid: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """Bits ``[B, cells*K]`` -> (tokens ``[B, h, w]``, images ``[B, H, W, 3]`` in [0, 1], not clamped)."""
  # one compiled program (packing and decoding) for either kind of tokenizer, as the sampler's
  return _decode(tok.params, jnp.asarray(bits, jnp.int32), tok_module=tok.module, grid=tuple(grid),
                 token_bits=int(tok.token_bits), lfq=_bits_kind(tok) == "lfq")


def resolve_settings(gen: BarModel, overrides: dict) -> dict:
  """The config's sampling settings (released evaluation values) with the non-None ``overrides`` on top."""
  settings = dict(gen.sampling_defaults)
  settings.update({k: v for k, v in overrides.items() if v is not None})
  unknown = set(settings) - set(SAMPLING_KEYS)
  if unknown:
    raise TypeError(f"unknown BAR sampling settings {sorted(unknown)}; known: {SAMPLING_KEYS}")
  missing = [k for k in SAMPLING_KEYS if k not in settings]
  if missing:
    raise ValueError(f"BAR sampling needs {missing}: set them in the config's sampling section or pass them")
  settings["tokens_allocation"] = tuple(int(t) for t in settings["tokens_allocation"])
  settings["guidance_scale"] = float(settings["guidance_scale"])
  settings["randomize_temperature"] = float(settings["randomize_temperature"])
  # the sampler's own checks (finite settings, an allocation of the step's bits), here before any sampling
  BarSamplingConfig(**settings).check(gen.module.step_bits)
  return settings


def sample(gen: BarModel, tok, labels, key: jax.Array | None, **kwargs) -> dict:
  """``generate_samples`` with the pair checked first (``maskbit_jax.sample`` does the same for any family)."""
  check_pair(gen, tok)
  return generate_samples(gen, tok, labels, key, **kwargs)


def generate_samples(gen: BarModel, tok, labels, key: jax.Array | None, *, decode: bool = True,
                     noise: dict | None = None, return_trace: bool = False, cat_gumbel_noise=None,
                     conf_gumbel_noise=None, **settings) -> dict:
  """Samples class-conditional images with BAR (raster order, KV cache, MBM head): the family's sampler, for
  a checked pair (``check_pair``).

  Args:
    gen: a ``BarModel``; tok: the tokenizer its bits decode with (``load_bar_tokenizer``).
    labels: int class ids ``[B]`` in ``[0, num_classes)``.
    key: PRNG key (may be None with ``noise``); the same key gives the same images.
    **settings: ``guidance_scale``, ``randomize_temperature``, ``tokens_allocation``;
      default: the config's released evaluation settings.
    noise: ``{"u_sample", "u_conf"}`` uniforms to replay (see ``sampling.bar_sampler.generate``).
  Returns:
    dict with ``bits`` int32 ``[B, cells*K]``, ``tokens`` int32 ``[B, h, w]``, ``images``
    float32 ``[B, H, W, 3]`` in [0, 1] (not clamped; absent with ``decode=False``) and,
    with ``return_trace``, ``trace``.
  """
  if cat_gumbel_noise is not None or conf_gumbel_noise is not None:
    raise TypeError("cat_gumbel_noise / conf_gumbel_noise are MaskGIT draws; BAR replays noise={'u_sample', "
                    "'u_conf'} (maskbit_jax.bar.sample)")
  if not isinstance(labels, jax.Array):  # placed (e.g. sharded) labels are used as they are
    labels = gen.check_labels(labels)
  settings = resolve_settings(gen, settings)
  out = generate(gen.module, gen.params, labels, key, noise=noise, return_trace=return_trace, **settings)
  bits, trace = out if return_trace else (out, None)
  grid = tuple(gen.module.grid)
  if decode:
    tokens, images = decode_bits(tok, bits, grid)
  else:
    tokens, images = bits_to_tokens(bits, grid, gen.token_bits), None
  result = dict(bits=bits, tokens=tokens)
  if decode:
    result["images"] = images
  if return_trace:
    result["trace"] = trace
  return result


__all__ = ["BarModel", "SAMPLING_KEYS", "bits_to_tokens", "check_pair", "decode_bits", "generate_samples",
           "load_bar_generator",
           "load_bar_params", "resolve_settings", "sample"]
