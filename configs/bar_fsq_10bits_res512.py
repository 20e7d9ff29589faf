"""BAR-FSQ tokenizer, 10 bits per token, 512px (32x32 tokens), as released
(configs/tokenizer/bar_fsq_10bits_res512.yaml).

The released file is spelled bar_sfq_10bits_res512.bin; BAR-L-res512 samples with it.
"""

from maskbit_jax.models.bar_tokenizer import bar_fsq_config


def get_config():
  return bar_fsq_config("bar_fsq_10bits_res512", token_size=10, crop_size=512)
