"""BAR-L (1.1B): 256 AR steps of one 16-bit token, dropout 0.2, as released (configs/generator/bar_l.yaml).

Sampling defaults are the README's evaluation settings (gFID 0.99 with bar_fsq_16bits_ft):
guidance 5.3, temperature 3.0, bit allocation [2, 2, 5, 7].
"""

from maskbit_jax.bar_config import bar_generator_config


def get_config():
  return bar_generator_config(
      "bar_l", hidden_size=1280, depth=32, heads=16, dropout=0.2, attn_drop=0.2, per_gpu_batch_size=64,
      yaml_sampling=dict(guidance_scale=5.0, randomize_temperature=1.0, tokens_allocation=[4, 4, 4, 4]),
      sampling=dict(guidance_scale=5.3, randomize_temperature=3.0, tokens_allocation=[2, 2, 5, 7],
                    tokenizer="bar_fsq_16bits_ft"))
