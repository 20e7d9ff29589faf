"""VQGAN+ with a learned 2^12 x 64 VQ codebook, as released (configs/tokenizer/vqgan_plus_12bit.yaml)."""

from maskbit_jax import config_defaults as d


def get_config():
  vq = d.vq_model(quantizer_type="lookup", codebook_size=2**12, token_size=64, entropy_loss_weight=0.0)
  return d.tokenizer_config("vqgan_plus_12bit", vq, disc=d.discriminator())
