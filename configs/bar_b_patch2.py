"""BAR-B/2 (415M): 64 AR steps of a 2x2 patch of 16-bit tokens (64 bits), as released
(configs/generator/bar_b_patch2.yaml).

Sampling defaults are the README's evaluation settings (gFID 1.35 with bar_fsq_16bits):
guidance 5.5, temperature 2.0, bit allocation [16, 16, 16, 16].
"""

from maskbit_jax.bar_config import bar_generator_config


def get_config():
  return bar_generator_config(
      "bar_b_patch2", hidden_size=768, depth=24, heads=12, patch_size=2,
      yaml_sampling=dict(guidance_scale=5.0, randomize_temperature=2.0, tokens_allocation=[16, 16, 16, 16]),
      sampling=dict(guidance_scale=5.5, randomize_temperature=2.0, tokens_allocation=[16, 16, 16, 16],
                    tokenizer="bar_fsq_16bits"))
