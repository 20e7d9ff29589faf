"""MaskBit VQGAN+ tokenizer, 18 bits per token (LFQ), as released; codebook_size stays 4096 as in the yaml (LFQ uses 2^18) (configs/tokenizer/maskbit_tokenizer_18bit.yaml).

  python -m maskbit_jax.convert --config configs/maskbit_tokenizer_18bit.py --checkpoint maskbit_tokenizer_18bit.bin --out ckpt/
"""

from maskbit_jax import config_defaults as d


def get_config():
  return d.tokenizer_config("maskbit_tokenizer_18bit", d.vq_model(token_size=18, codebook_size=4096), disc=d.discriminator())
