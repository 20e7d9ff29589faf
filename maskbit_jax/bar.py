"""The BAR API: ``load_bar_generator``, ``load_bar_tokenizer``, ``sample`` (also reached through ``maskbit_jax.sample``).

    gen = load_bar_generator("configs/bar_b.py", "bar_b.bin")
    tok = load_bar_tokenizer("configs/bar_b.py", "bar_fsq_16bits_ft.bin")      # decoder only
    out = maskbit_jax.sample(gen, tok, [207, 360], jax.random.key(0))          # bits, tokens, images in [0, 1]

A BAR generator emits bits ``[B, cells*K]`` (cells row-major, bit j of a cell
has weight 2^j). Two kinds of tokenizer turn them into images:

* ``bar_fsq``: BAR's own binary-FSQ tokenizer (the released models); its ViT
  decoder outputs [-1, 1], mapped here to [0, 1];
* ``lfq``: a MaskBit lookup-free (VQGAN+) tokenizer, for BAR trained on
  MaskBit's bit tokens (``configs/bar_tiny.py``, ``configs/bar_on_maskbit_12bit.py``):
  the bits are packed into LFQ indices (LFQ channel j = bit j) and decoded.

The tokenizer kind follows from ``model.vq_model``: ``quantizer_type:
lookup-free`` is LFQ, anything else BAR-FSQ.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from maskbit_jax.bar_config import SAMPLING_KEYS, bar_fields, bar_sampling_defaults
from maskbit_jax.config import ConfigLike, load_config
from maskbit_jax.models.bar_generator import BarGenerator, build_bar_module, init_bar_params
from maskbit_jax.models.bar_fsq import pack_bits

LFQ, BAR_FSQ = "lfq", "bar_fsq"


def is_bar_config(cfg: ml_collections.ConfigDict) -> bool:
  """True for a BAR generator config (``model.generator``; MaskBit generators have ``model.mlm_model``)."""
  model = cfg.get("model", None) or {}
  return "generator" in model and "mlm_model" not in model


def tokenizer_kind(cfg: ml_collections.ConfigDict) -> str:
  """``lfq`` (MaskBit lookup-free tokenizer) or ``bar_fsq`` (BAR's tokenizer), from ``model.vq_model``."""
  vq = (cfg.get("model", None) or {}).get("vq_model", None)
  if vq is None:
    raise ValueError("config has no model.vq_model section: cannot tell which tokenizer the bits belong to")
  return LFQ if vq.get("quantizer_type") == "lookup-free" else BAR_FSQ


def bar_on_maskbit_config(name: str, vq: dict, *, tokenizer_name: str, resolution: int, hidden_size: int,
                          depth: int, heads: int, num_classes: int, sampling: dict, head_width: int = 2048,
                          head_layers: int = 3, repeat_class_condition: int = 32, per_gpu_batch_size: int = 128,
                          max_train_steps: int = 250_000, warmup_steps: int = 62_500,
                          anneal: tuple[int, int] | None = None, patch_size: int = 1,
                          source: str = "tfds:imagenet2012:train",
                          eval_source: str = "tfds:imagenet2012:validation") -> ml_collections.ConfigDict:
  """A BAR generator config on a MaskBit LFQ tokenizer's bits (not a released model; the BAR recipe otherwise).

  ``vq``: the tokenizer's ``model.vq_model`` (``config_defaults.vq_model``); the
  token grid follows from ``resolution`` and its stride; ``patch_size``: tokens a side per AR step (the
  step then predicts ``patch_size**2 * token_size`` bits, as BAR-B/2 does). ``anneal``: the random
  to raster order ramp, by default over 50 % .. 75 % of the steps (as BAR-B's
  125k .. 187.5k of 250k). ``sampling``: ``guidance_scale``,
  ``randomize_temperature``, ``tokens_allocation``. Data: images of
  ``dataset.source``, resized + centre-cropped + flipped with p = 1/2 (BAR's ADM
  crop), encoded by the frozen tokenizer inside the step; or a
  ``dataset.pretokenized`` token set (``python -m maskbit_jax.pretokenize``).
  """
  from maskbit_jax import config_defaults as d
  from maskbit_jax.bar_config import bar_generator_config
  from maskbit_jax.models.tokenizer import latent_stride_of

  if vq.get("quantizer_type") != "lookup-free":
    raise ValueError("BAR on MaskBit tokens needs a lookup-free (bit) tokenizer: vq_model.quantizer_type")
  side = resolution // latent_stride_of(vq)
  anneal = anneal or (max_train_steps // 2, max_train_steps * 3 // 4)
  cfg = bar_generator_config(
      name, hidden_size=hidden_size, depth=depth, heads=heads, image_seq_len=side * side,
      token_size=int(vq["token_size"]), patch_size=patch_size, anneal=anneal, yaml_sampling=sampling,
      sampling=dict(sampling, tokenizer=tokenizer_name), resolution=resolution, per_gpu_batch_size=per_gpu_batch_size,
      max_train_steps=max_train_steps, warmup_steps=warmup_steps, head_width=head_width, head_layers=head_layers,
      num_classes=num_classes, repeat_class_condition=repeat_class_condition)
  cfg.model.vq_model = dict(vq)
  run = d.training_run(save_every=cfg.experiment.save_every, generate_every=cfg.experiment.generate_every,
                       eval_every=0, source=source, eval_source=eval_source)
  # the frozen MaskBit tokenizer (on-the-fly bits and sample decoding); BAR's own key is unused here
  cfg.experiment.update(run["cadence"], vqgan_checkpoint="", tokenizer_checkpoint="")
  cfg.dataset = dict(preprocessing=dict(resolution=resolution, use_random_crop=False, use_aspect_ratio_aug=False,
                                        min_scale=1.0, interpolation="bilinear", random_flip=True),
                     pretokenized="", **run["data"])
  cfg.training.global_batch_size = 0  # > 0: fixed global batch instead of per_gpu_batch_size x devices
  # mesh axis sizes over the first num_devices devices (0: all), checkpoints kept
  cfg.runtime.update(mesh=dict(data=-1, fsdp=1, tensor=1), num_devices=0, keep_checkpoints=3)
  return cfg


def _runtime(cfg, dtype, precision):
  from maskbit_jax.tokenizer import _runtime as runtime

  return runtime(cfg, dtype, precision)


# ---------------------------------------------------------------- generator

@dataclasses.dataclass(frozen=True, eq=False)
class BarModel:
  """A BAR generator with its parameters (``module`` is the flax ``BarGenerator``)."""

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
  def sampling_defaults(self) -> dict:
    return bar_sampling_defaults(self.config)

  def check_labels(self, labels) -> np.ndarray:
    from maskbit_jax.generator import check_class_labels

    return check_class_labels(labels, self.num_classes)


def load_bar_generator(config: ConfigLike, checkpoint: str | os.PathLike | None = None, *, random_init: bool = False,
                       seed: int = 0, dtype: str | None = None, precision: str | None = None,
                       overrides=(), registry=None) -> BarModel:
  """Builds the BAR generator of a config and loads its weights.

  ``config``: as ``load_tokenizer`` takes it, or a released name (``"bar_b"``: config and weights).
  ``checkpoint``: a released ``.bin`` or one of our exported folders (a train
  run's ``export/bar_generator``); default ``experiment.generator_checkpoint``.
  ``random_init`` gives untrained weights (smoke tests); never implicit.
  """
  from maskbit_jax import hub
  from maskbit_jax.convert.bar_mapping import load_bar_params

  config, checkpoint = hub.resolve_model(config, checkpoint, "bar_generator", random_init=random_init,
                                         registry_override=registry)
  cfg = load_config(config, overrides)
  if not is_bar_config(cfg):
    raise ValueError("not a BAR generator config (no model.generator section)")
  compute_dtype, prec = _runtime(cfg, dtype, precision)
  module = build_bar_module(bar_fields(cfg), dtype=compute_dtype, precision=prec)
  if checkpoint is None and not random_init:
    checkpoint = (cfg.get("experiment", None) or {}).get("generator_checkpoint") or None
    checkpoint = hub.resolve_checkpoint(checkpoint, "bar_generator", registry)  # the config may name a release
  if checkpoint is None and not random_init:
    raise ValueError("no BAR generator checkpoint given (argument or experiment.generator_checkpoint); "
                     "pass random_init=True (on the command line: --random_init) for untrained weights")
  params = init_bar_params(module, jax.random.key(seed)) if random_init else load_bar_params(checkpoint, module)
  return BarModel(cfg, module, params)


# ---------------------------------------------------------------- tokenizer (decoding side)

@dataclasses.dataclass(frozen=True, eq=False)
class BarFsqTokenizer:
  """BAR's binary-FSQ tokenizer with its parameters (decode-only unless built with the encoder)."""

  config: ml_collections.ConfigDict
  module: nn.Module
  params: Any

  @property
  def token_bits(self) -> int:
    return self.module.token_size

  @property
  def grid(self) -> tuple[int, int]:
    return self.module.grid_size, self.module.grid_size

  @functools.cached_property
  def _decode_fn(self):
    return jax.jit(lambda p, b: self.module.apply({"params": p}, b, method="decode_bits"))

  def decode_bits(self, bits) -> jax.Array:
    """Bits ``[B, cells*K]`` or ``[B, cells, K]`` -> images ``[B, H, W, 3]`` in the decoder's [-1, 1] (not clamped)."""
    return self._decode_fn(self.params, jnp.asarray(bits, jnp.int32))


def load_bar_tokenizer(config: ConfigLike, checkpoint: str | os.PathLike | None = None, *,
                       random_init: bool = False, seed: int = 0, dtype: str | None = None,
                       precision: str | None = None, with_encoder: bool = False, overrides=(), registry=None):
  """The tokenizer a BAR config's bits decode with: a MaskBit ``Tokenizer`` (LFQ) or a ``BarFsqTokenizer``.

  ``config``/``checkpoint`` may be released names: ``load_bar_tokenizer("bar_fsq_16bits_ft")``, or a BAR
  generator's name (``"bar_b"``) for the tokenizer it was released with.
  ``checkpoint`` default: ``experiment.vqgan_checkpoint`` (LFQ) or
  ``experiment.tokenizer_checkpoint`` (BAR-FSQ). A BAR-FSQ tokenizer is built
  decode-only (decoder + ``out_proj``) unless ``with_encoder``.
  """
  from maskbit_jax import hub

  config, checkpoint = hub.resolve_model(config, checkpoint, "bar_tokenizer", random_init=random_init,
                                         registry_override=registry)
  cfg = load_config(config, overrides)
  if tokenizer_kind(cfg) == LFQ:
    from maskbit_jax.tokenizer import load_tokenizer

    return load_tokenizer(cfg, checkpoint, random_init=random_init, seed=seed, dtype=dtype, precision=precision)
  from maskbit_jax.convert.bar_tokenizer_mapping import load_bar_tokenizer_params
  from maskbit_jax.models.bar_tokenizer import (abstract_bar_tokenizer_params, bar_tokenizer_from_config,
                                                init_bar_tokenizer_params)

  compute_dtype, prec = _runtime(cfg, dtype, precision)
  module = bar_tokenizer_from_config(cfg, with_encoder=with_encoder, dtype=compute_dtype, precision=prec)
  if checkpoint is None and not random_init:
    checkpoint = (cfg.get("experiment", None) or {}).get("tokenizer_checkpoint") or None
    checkpoint = hub.resolve_checkpoint(checkpoint, "bar_tokenizer", registry)  # the config may name a release
  if checkpoint is None and not random_init:
    raise ValueError("no BAR tokenizer checkpoint given (argument or experiment.tokenizer_checkpoint); "
                     "pass random_init=True (on the command line: --random_init) for untrained weights")
  if random_init:
    params = nn.meta.unbox(init_bar_tokenizer_params(module, jax.random.key(seed)))
  else:
    abstract = nn.meta.unbox(abstract_bar_tokenizer_params(module))
    params = load_bar_tokenizer_params(checkpoint, abstract, skip_unbuilt_parts=not with_encoder)
  return BarFsqTokenizer(cfg, module, params)


def tokenizer_grid(tok, resolution: int | None = None) -> tuple[int, int]:
  """The latent grid ``(h, w)`` of ``tok``; a MaskBit tokenizer's depends on the image ``resolution``."""
  if isinstance(tok, BarFsqTokenizer):
    return tok.grid
  if not resolution or int(resolution) <= 0:
    raise ValueError("a BAR config on a MaskBit tokenizer needs dataset.preprocessing.resolution (image size)")
  side = int(resolution) // tok.latent_stride
  return side, side


def _resolution(cfg: ml_collections.ConfigDict) -> int | None:
  pre = (cfg.get("dataset", None) or {}).get("preprocessing", None) or {}
  return pre.get("resolution", None)


def check_pair(gen: BarModel, tok) -> None:
  """The generator's bits must be this tokenizer's: same bits per token, same latent grid."""
  if not isinstance(tok, BarFsqTokenizer) and not getattr(tok, "is_lookup_free", False):
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
  return _decode(tok.params, jnp.asarray(bits, jnp.int32), tok_module=tok.module, grid=tuple(grid),
                 token_bits=int(tok.token_bits), lfq=not isinstance(tok, BarFsqTokenizer))


def images_to_uint8(images_01) -> np.ndarray:
  """[0, 1] images -> uint8 as the reference sampling script writes them: ``clamp(0, 1) * 255``, truncated."""
  from maskbit_jax.image_io import to_uint8

  return np.asarray(to_uint8(np.asarray(images_01, np.float32)))


# ---------------------------------------------------------------- sampling

def resolve_settings(gen: BarModel, overrides: dict) -> dict:
  """The config's sampling settings (released evaluation values) with the non-None ``overrides`` on top."""
  from maskbit_jax.sampling.bar_sampler import BarSamplingConfig

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


def sample(gen: BarModel, tok, labels, key: jax.Array | None, *, decode: bool = True, noise: dict | None = None,
           return_trace: bool = False, **settings) -> dict:
  """Samples class-conditional images with BAR (raster order, KV cache, MBM head).

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
  from maskbit_jax.sampling.bar_sampler import generate

  check_pair(gen, tok)
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


__all__ = ["BAR_FSQ", "LFQ", "SAMPLING_KEYS", "BarFsqTokenizer", "BarModel", "bits_to_tokens", "check_pair", "decode_bits",
           "images_to_uint8", "is_bar_config", "load_bar_generator", "load_bar_tokenizer", "resolve_settings",
           "sample", "tokenizer_grid", "tokenizer_kind"]
