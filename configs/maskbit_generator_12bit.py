"""MaskBit generator on 12-bit tokens, as released (configs/generator/maskbit_generator_12bit.yaml).

  python -m maskbit_jax.sample --config configs/maskbit_generator_12bit.py \
      --tokenizer maskbit_tokenizer_12bit.bin --generator maskbit_generator_12bit.bin --classes 1,207,360 --out out/
"""

from maskbit_jax import config_defaults as d


def get_config():
  vq = d.vq_model(token_size=12)
  mlm = d.mlm_model(sampling=dict(guidance_scale=7.1, randomize_temperature=8.2, scale_pow=3.0))
  return d.generator_config("maskbit_generator_12bit", vq, mlm)
