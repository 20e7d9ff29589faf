"""The MaskBit generator family's sampling: the pair check, the settings and the sampler that
``maskbit_jax.sample`` dispatches to (the registry's ``maskbit_generator`` family).

Generation (all MaskGIT steps, recombining the splits, decoding) is one compiled function.
"""

from __future__ import annotations

import functools

import jax

from maskbit_jax.bits import combine_tokens
from maskbit_jax.sampling.maskgit_sampler import SamplerConfig, sample_tokens

SAMPLER_ARGS = ("num_steps", "guidance_scale", "guidance_annealing", "scale_pow", "softmax_temperature",
                "use_sampling_annealing", "randomize_temperature", "mask_schedule_strategy")


def check_pair(gen, tok) -> None:
  """The generator must run on this tokenizer's bit width and latent grid."""
  if not getattr(tok, "is_lookup_free", False):
    raise ValueError("MaskBit generators need a lookup-free (bit) tokenizer")
  if gen.token_bits != tok.token_bits:
    raise ValueError(f"the generator predicts {gen.token_bits}-bit tokens but the tokenizer has "
                     f"{tok.token_bits} bits: pair checkpoints of the same bit width")
  grid = gen.module.img_size // tok.latent_stride
  if grid * grid != gen.seq_len:
    raise ValueError(f"generator sequence length {gen.seq_len} does not match the tokenizer's "
                     f"{grid}x{grid} latent grid at {gen.module.img_size} px")


def resolve_settings(gen, overrides: dict) -> dict:
  """The config's released sampling settings with the non-None ``overrides`` on top, checked."""
  settings = dict(gen.sampling_defaults)
  settings.update({k: v for k, v in overrides.items() if v is not None})
  unknown = set(settings) - set(SAMPLER_ARGS)
  if unknown:
    raise TypeError(f"unknown sampling settings {sorted(unknown)}; known: {SAMPLER_ARGS}")
  settings.setdefault("num_steps", 64)
  # the sampler's own checks (finite scales and temperatures, known schedules), here before any sampling
  SamplerConfig(num_positions=gen.seq_len, codebook_splits=gen.codebook_splits, mask_token=gen.mask_token,
                **settings)
  return settings


@functools.partial(jax.jit, static_argnames=("gen_module", "tok_module", "settings", "decode", "return_trace"))
def _generate(gen_params, tok_params, labels, key, cat_noise, conf_noise, *, gen_module, tok_module,
              settings, decode, return_trace):
  def logits_fn(tokens, labels, drop, step):
    del step
    return gen_module.apply({"params": gen_params}, tokens, labels, drop)

  out = sample_tokens(logits_fn, labels, key, num_positions=gen_module.seq_len,
                      codebook_splits=gen_module.codebook_splits, mask_token=gen_module.mask_token,
                      cat_gumbel_noise=cat_noise, conf_gumbel_noise=conf_noise, return_trace=return_trace,
                      **dict(settings))
  split_tokens, trace = out if return_trace else (out, None)
  side = int(round(gen_module.seq_len ** 0.5))
  tokens = combine_tokens(split_tokens, gen_module.token_size).reshape(labels.shape[0], side, side)
  images = tok_module.apply({"params": tok_params}, tokens, method="decode_tokens") if decode else None
  return tokens, images, trace


def generate_samples(gen, tok, labels, key: jax.Array, *, decode: bool = True, cat_gumbel_noise=None,
                     conf_gumbel_noise=None, return_trace: bool = False, **settings) -> dict:
  """The family's sampler for a checked pair (``check_pair``); arguments and result as ``maskbit_jax.sample``'s.

  ``cat_gumbel_noise``, ``conf_gumbel_noise``: replay stored noise instead of drawing
  (``[S, B, N, M, C]`` and ``[S, B, N, M]``).
  """
  labels = gen.check_labels(labels)
  settings = resolve_settings(gen, settings)
  frozen = tuple(sorted(settings.items()))
  tokens, images, trace = _generate(gen.params, tok.params, labels, key, cat_gumbel_noise, conf_gumbel_noise,
                                    gen_module=gen.module, tok_module=tok.module, settings=frozen,
                                    decode=decode, return_trace=return_trace)
  out = dict(tokens=tokens)
  if decode:
    out["images"] = images
  if return_trace:
    out["trace"] = trace
  return out


__all__ = ["SAMPLER_ARGS", "check_pair", "generate_samples", "resolve_settings"]
