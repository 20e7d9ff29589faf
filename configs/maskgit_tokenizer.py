"""The MaskGIT tokenizer (legacy decoder, 1024 x 256 VQ codebook), configs/external/maskgit_tokenizer.yaml."""

from maskbit_jax import config_defaults as d


def get_config():
  vq = d.vq_model(model_class="maskgit", quantizer_type="lookup", codebook_size=1024, token_size=256,
                  sample_with_conv=False)
  return d.tokenizer_config("maskgit_tokenizer", vq)
