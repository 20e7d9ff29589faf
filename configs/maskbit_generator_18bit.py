"""MaskBit generator on 18-bit tokens, as released (configs/generator/maskbit_generator_18bit.yaml).

  python -m maskbit_jax.sample --config configs/maskbit_generator_18bit.py \
      --tokenizer maskbit_tokenizer_18bit.bin --generator maskbit_generator_18bit.bin --classes 1,207,360 --out out/
"""

from maskbit_jax import config_defaults as d


def get_config():
  vq = d.vq_model(token_size=18, codebook_size=262144)
  mlm = d.mlm_model(sampling=dict(guidance_scale=5.7, randomize_temperature=8.5, scale_pow=2.5))
  return d.generator_config("maskbit_generator_18bit", vq, mlm)
