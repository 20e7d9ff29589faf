"""BAR-L at 512 px (1.1B): 1024 AR steps of one 10-bit token, dropout 0.2, as released
(configs/generator/bar_l_res512.yaml).

Sampling defaults are the README's evaluation settings (ImageNet-512 gFID 1.09 with the 10-bit 512 px
tokenizer, whose released file is spelled bar_sfq_10bits_res512): guidance 4.2, temperature 2.8,
bit allocation [2, 2, 2, 4].
"""

from maskbit_jax.bar_config import bar_generator_config


def get_config():
  return bar_generator_config(
      "bar_l_res512", hidden_size=1280, depth=32, heads=16, image_seq_len=1024, token_size=10,
      dropout=0.2, attn_drop=0.2, anneal=(62_500, 93_750), resolution=512, per_gpu_batch_size=32,
      max_train_steps=125_000, warmup_steps=31_250,
      yaml_sampling=dict(guidance_scale=5.0, randomize_temperature=1.0, tokens_allocation=[2, 2, 2, 4]),
      sampling=dict(guidance_scale=4.2, randomize_temperature=2.8, tokens_allocation=[2, 2, 2, 4],
                    tokenizer="bar_sfq_10bits_res512"))
