"""A tiny MaskBit generator on the tiny 12-bit tokenizer (64 px, 4x4 tokens) for tests, demos and CPU runs.

  python -m maskbit_jax.sample --config configs/generator_tiny.py --random_init --classes 1,2,3 --out out/tiny
"""

from maskbit_jax import config_defaults as d


def get_config(arg: str = ""):
  opts = dict(kv.split("=") for kv in arg.split(",") if kv)
  bits = int(opts.get("bits", 12))
  vq = d.vq_model(token_size=bits, hidden_channels=32)
  mlm = d.mlm_model(hidden_dim=64, depth=2, heads=4, mlp_dim=128, dropout=0.0, codebook_splits=2,
                    sampling=dict(guidance_scale=3.0, randomize_temperature=4.5, scale_pow=3.0, num_steps=8))
  return d.generator_config("generator_tiny", vq, mlm, resolution=64)
