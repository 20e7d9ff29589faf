"""The original Taming VQGAN (f16, 1024 codes), configs/external/taming_vqgan_tokenizer.yaml.

Its architecture is fixed; only the model class, quantizer and codebook are configurable.
"""

from maskbit_jax import config_defaults as d


def get_config():
  vq = dict(model_class="taming", quantizer_type="lookup", codebook_size=1024, token_size=256)
  return d.tokenizer_config("taming_vqgan", vq)
