"""A tiny LFQ VQGAN+ tokenizer (12 bits, 32 channels) for tests, the demo and CPU runs.

  python -m maskbit_jax.reconstruct --config configs/tokenizer_tiny.py --random_init --out /tmp/recon
  --config=configs/tokenizer_tiny.py:bits=10   other bit counts
"""

from maskbit_jax import config_defaults as d


def get_config(arg: str = ""):
  opts = dict(kv.split("=") for kv in arg.split(",") if kv)
  bits = int(opts.get("bits", 12))
  vq = d.vq_model(token_size=bits, hidden_channels=32)
  return d.tokenizer_config("tokenizer_tiny", vq, disc=d.discriminator(hidden_channels=32, num_stages=3),
                            resolution=64)
