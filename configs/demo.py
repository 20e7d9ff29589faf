"""The reference demo config (configs/demo/demo.yaml): 14-bit tokenizer and generator, with the
14-bit release's sampling settings as defaults (the demo yaml itself carries none)."""

from maskbit_jax import config_defaults as d


def get_config():
  cfg = d.generator_config("demo", d.vq_model(token_size=14, codebook_size=16384), d.mlm_model())
  cfg.sampling = dict(guidance_scale=7.1, guidance_annealing="cosine", num_steps=64, scale_pow=3.0,
                      randomize_temperature=7.8, softmax_temperature=1.0, gen_mask_schedule_strategy="arccos",
                      use_sampling_annealing=False)
  return cfg
