"""BAR-B (415M): 256 AR steps of one 16-bit token, as released (configs/generator/bar_b.yaml).

Sampling defaults are the README's evaluation settings (gFID 1.13 with bar_fsq_16bits_ft):
guidance 5.0, temperature 2.5, bit allocation [2, 2, 5, 7].
"""

from maskbit_jax.bar_config import bar_generator_config


def get_config():
  return bar_generator_config(
      "bar_b", hidden_size=768, depth=24, heads=12,
      yaml_sampling=dict(guidance_scale=5.0, randomize_temperature=1.0, tokens_allocation=[4, 4, 4, 4]),
      sampling=dict(guidance_scale=5.0, randomize_temperature=2.5, tokens_allocation=[2, 2, 5, 7],
                    tokenizer="bar_fsq_16bits_ft"))
