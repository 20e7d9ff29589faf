"""MaskBit generator on 10-bit tokens, as released (configs/generator/maskbit_generator_10bit.yaml).

  python -m maskbit_jax.sample --config configs/maskbit_generator_10bit.py \
      --tokenizer maskbit_tokenizer_10bit.bin --generator maskbit_generator_10bit.bin --classes 1,207,360 --out out/
"""

from maskbit_jax import config_defaults as d


def get_config():
  vq = d.vq_model(token_size=10, codebook_size=1024)
  mlm = d.mlm_model(sampling=dict(guidance_scale=6.4, randomize_temperature=10.5, scale_pow=2.5))
  return d.generator_config("maskbit_generator_10bit", vq, mlm)
