"""BAR-B on MaskBit's 12-bit LFQ tokens (beyond the reference): 256 px -> 16x16 tokens of 12 bits.

  python -m maskbit_jax.train --config configs/bar_on_maskbit_12bit.py --workdir runs/bar_on_maskbit_12bit \
      --config.experiment.vqgan_checkpoint=maskbit_tokenizer_12bit.bin \
      --config.dataset.source=tfds:imagenet2012:train
  python -m maskbit_jax.sample --config configs/bar_on_maskbit_12bit.py \
      --tokenizer maskbit_tokenizer_12bit.bin --generator runs/bar_on_maskbit_12bit/export/bar_generator \
      --classes 1,207,360 --out out/bar12

The BAR-B generator (width 768, 24 blocks, 12 heads, MBM head 2048 x 3; 256 AR
steps of one token, so k = 12 bits per step) trained with BAR-B's recipe
(AdamW 4e-4, betas 0.9/0.96, wd 0.03, warm-up 62.5k, cosine to 1e-5 at 250k,
global batch 2048 = 128 x 16 devices, bf16, no EMA, label dropout 0.1, random
order annealed to raster over steps 125k..187.5k) on the bits of the released
MaskBit VQGAN+ 12-bit LFQ tokenizer (configs/maskbit_tokenizer_12bit.py), made
inside the step or read from ``dataset.pretokenized``. No such model was
released: the sampling settings below are a starting point (BAR-B's scaled to
12 bits), to be tuned on the trained weights.
"""

from maskbit_jax import config_defaults as d
from maskbit_jax.bar_config import bar_on_maskbit_config


def get_config():
  cfg = bar_on_maskbit_config(
      "bar_on_maskbit_12bit", d.vq_model(token_size=12), tokenizer_name="maskbit_tokenizer_12bit", resolution=256,
      hidden_size=768, depth=24, heads=12, num_classes=1000,
      sampling=dict(guidance_scale=5.0, randomize_temperature=2.5, tokens_allocation=[2, 2, 3, 5]))
  cfg.experiment.update(save_every=10_000, generate_every=5000)
  return cfg
