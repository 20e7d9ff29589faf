"""MaskBit generator on 16-bit tokens, as released (configs/generator/maskbit_generator_16bit.yaml).

  python -m maskbit_jax.sample --config configs/maskbit_generator_16bit.py \
      --tokenizer maskbit_tokenizer_16bit.bin --generator maskbit_generator_16bit.bin --classes 1,207,360 --out out/
"""

from maskbit_jax import config_defaults as d


def get_config():
  vq = d.vq_model(token_size=16, codebook_size=65536)
  mlm = d.mlm_model(sampling=dict(guidance_scale=6.5, randomize_temperature=7.5, scale_pow=2.5))
  return d.generator_config("maskbit_generator_16bit", vq, mlm)
