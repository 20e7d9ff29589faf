"""BAR-B/4 (416M): 16 AR steps of a 4x4 patch of 16-bit tokens (256 bits), as released
(configs/generator/bar_b_patch4.yaml).

Sampling defaults are the README's evaluation settings (gFID 2.34 with bar_fsq_16bits):
guidance 9.6, temperature 1.4, bit allocation [64, 64, 64, 64].
"""

from maskbit_jax.bar_config import bar_generator_config


def get_config():
  return bar_generator_config(
      "bar_b_patch4", hidden_size=768, depth=24, heads=12, patch_size=4,
      yaml_sampling=dict(guidance_scale=5.0, randomize_temperature=2.0, tokens_allocation=[64, 64, 64, 64]),
      sampling=dict(guidance_scale=9.6, randomize_temperature=1.4, tokens_allocation=[64, 64, 64, 64],
                    tokenizer="bar_fsq_16bits"))
