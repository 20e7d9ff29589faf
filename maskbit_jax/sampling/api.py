"""``maskbit_jax.sample``: class-conditional sampling for any registered generator family.

    out = maskbit_jax.sample(gen, tok, [207, 360], jax.random.key(0))   # MaskBit or BAR, or a user's family

The pair is checked once (the family's ``check_pair``: bits per token, token grid) and the generator's family
sampler runs (``registry.family(gen.family).sampler``); nothing here knows which families exist.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax import registry, sharding


def _role(model) -> str | None:
  try:
    return registry.of(model).role
  except (TypeError, ValueError):
    return None


def check_call(gen, tok, key) -> None:
  """The arguments' kinds, named: the generator first, then its tokenizer, and a PRNG key (not a seed)."""
  if _role(gen) != registry.GENERATOR:
    hint = " (the generator comes first, then the tokenizer)" if _role(tok) == registry.GENERATOR else ""
    raise TypeError(f"gen must be a generator from load_generator / load_bar_generator, got "
                    f"{type(gen).__name__}{hint}")
  if isinstance(key, (int, np.integer)):
    raise TypeError(f"key must be a PRNG key such as jax.random.key({key}), got the int {key}")


def check_pair(gen, tok) -> None:
  """``tok`` decodes ``gen``'s tokens (the generator family's check: bits per token, token grid)."""
  registry.of(gen).get("check_pair")(gen, tok)


def resolve_settings(gen, overrides: dict) -> dict:
  """``gen``'s released sampling settings with the non-None ``overrides`` on top, checked by its family."""
  return registry.of(gen).get("resolve_settings")(gen, overrides)


def sample(gen, tok, labels, key: jax.Array, **settings) -> dict:
  """Samples class-conditional images.

  Args:
    gen, tok: a generator and the tokenizer its tokens decode with (the same bit width and token grid).
    labels: int class ids ``[B]`` in ``[0, gen.num_classes)``.
    key: PRNG key; the same key gives the same images.
    **settings: the family's sampler settings (``registry.family(gen.family).sampling_keys``); default: the
      released evaluation settings in the generator's config.
      MaskBit: ``num_steps``, ``guidance_scale``, ``guidance_annealing`` (none/linear/cosine), ``scale_pow``,
      ``softmax_temperature``, ``use_sampling_annealing``, ``randomize_temperature``,
      ``mask_schedule_strategy`` (linear/square/cosine/arccos/root); ``cat_gumbel_noise``,
      ``conf_gumbel_noise`` replay stored noise. BAR: ``guidance_scale``, ``randomize_temperature``,
      ``tokens_allocation``; ``noise={"u_sample", "u_conf"}`` replays. Both: ``decode`` (default True),
      ``return_trace``.
  Returns:
    dict with ``tokens`` int32 ``[B, h, w]``, ``images`` float32 ``[B, H, W, 3]`` in [0, 1]
    (decoded, not clamped; absent with ``decode=False``), ``bits`` (BAR) and, with
    ``return_trace``, ``trace`` (per-step sampler arrays).
  """
  check_call(gen, tok, key)
  family = registry.of(gen)
  family.get("check_pair")(gen, tok)
  return family.get("sampler")(gen, tok, labels, key, **settings)


def sample_sharded(gen, tok, labels, key: jax.Array, **settings) -> dict:
  """``sample`` with the batch split over every local device (padded to a multiple of the device count)."""
  labels = np.asarray(labels)
  n_dev = jax.local_device_count()
  pad = (-len(labels)) % n_dev
  padded = np.concatenate([labels, np.repeat(labels[-1:], pad)]) if pad else labels
  mesh = sharding.create_mesh({"data": -1}, jax.local_devices())
  placed = jax.device_put(jnp.asarray(padded, jnp.int32), sharding.batch_sharding(mesh, 1))
  out = sample(gen, tok, placed, key, **settings)
  return {k: np.asarray(v)[: len(labels)] for k, v in out.items()}


__all__ = ["check_call", "check_pair", "resolve_settings", "sample", "sample_sharded"]
