"""BAR-FSQ tokenizer, 16 bits per token, 256px (16x16 tokens), as released (configs/tokenizer/bar_fsq_16bits.yaml).

The released files bar_fsq_16bits.bin and bar_fsq_16bits_ft.bin (decoder fine-tuned; used by BAR-B / BAR-L)
share this architecture. Decode-only use (sampling) needs only the decoder and quantize.out_proj:

  maskbit_jax.convert.bar_tokenizer_mapping.load_bar_tokenizer_params(path, abstract, skip_unbuilt_parts=True)
"""

from maskbit_jax.models.bar_tokenizer import bar_fsq_config


def get_config():
  return bar_fsq_config("bar_fsq_16bits", token_size=16, crop_size=256)
