"""MaskBit VQGAN+ tokenizer, 10 bits per token (LFQ), as released (configs/tokenizer/maskbit_tokenizer_10bit.yaml).

  python -m maskbit_jax.convert --config configs/maskbit_tokenizer_10bit.py --checkpoint maskbit_tokenizer_10bit.bin --out ckpt/
"""

from maskbit_jax import config_defaults as d


def get_config():
  return d.tokenizer_config("maskbit_tokenizer_10bit", d.vq_model(token_size=10), disc=d.discriminator())
