"""MaskBit VQGAN+ tokenizer, 12 bits per token (LFQ), as released (configs/tokenizer/maskbit_tokenizer_12bit.yaml).

  python -m maskbit_jax.convert --config configs/maskbit_tokenizer_12bit.py --checkpoint maskbit_tokenizer_12bit.bin --out ckpt/
"""

from maskbit_jax import config_defaults as d


def get_config():
  return d.tokenizer_config("maskbit_tokenizer_12bit", d.vq_model(token_size=12), disc=d.discriminator())
