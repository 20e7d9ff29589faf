"""A tiny BAR on the tiny 12-bit MaskBit tokenizer's bits (16 px, 8x8 tokens of 12 bits, 16 classes), for tests,
demos and CPU runs.

  python -m maskbit_jax.train --config configs/bar_tiny.py --workdir runs/bar_tiny \
      --config.experiment.vqgan_checkpoint=runs/tok/export/tokenizer
  python -m maskbit_jax.sample --config configs/bar_tiny.py --tokenizer runs/tok/export/tokenizer \
      --generator runs/bar_tiny/export/bar_generator --classes 1,2,3 --out out/bar_tiny
  python -m maskbit_jax.sample --config configs/bar_tiny.py --random_init --classes 1,2,3 --out out/bar_tiny

BAR's recipe (AdamW with its weight-decay groups, warm-up + cosine to a floor,
logit-normal bit masking, label dropout, random order annealed to raster)
scaled down to a minute or two on a CPU: width 64, 2 blocks, MBM head 64 x 2,
16 AR steps of a 2x2 patch of tokens (48 bits), 4 class-prefix tokens, batch 32, 600 steps at a higher
learning rate; bits made by the frozen tiny tokenizer inside the step from the
embedded synthetic set.
"""

from maskbit_jax import config_defaults as d
from maskbit_jax.bar_config import bar_on_maskbit_config


PATCH = 2  # 2x2 tokens an AR step: 16 steps over the 8x8 grid


def get_config(arg: str = ""):
  opts = dict(kv.split("=") for kv in arg.split(",") if kv)
  bits = int(opts.get("bits", 12))
  steps = 600
  cfg = bar_on_maskbit_config(
      "bar_tiny", d.tiny_vq_model(bits), tokenizer_name="tokenizer_tiny", resolution=d.TINY_RESOLUTION,
      hidden_size=64, depth=2, heads=4, num_classes=d.TINY_NCLASS, head_width=64, head_layers=2,
      repeat_class_condition=4, patch_size=PATCH, per_gpu_batch_size=32, max_train_steps=steps, warmup_steps=50,
      source=d.TINY_SOURCE, eval_source=d.TINY_EVAL_SOURCE,
      sampling=dict(guidance_scale=2.0, randomize_temperature=1.0, tokens_allocation=_allocation(bits * PATCH**2)))
  cfg.optimizer.params.update(learning_rate=1e-3)
  cfg.lr_scheduler.params.update(learning_rate=1e-3, end_lr=1e-4)
  cfg.training.update(mixed_precision="no", num_generated_images=16)
  cfg.experiment.update(save_every=200, log_every=50, generate_every=300)
  cfg.dataset.update(num_threads=2)
  return cfg


def _allocation(bits: int) -> list[int]:
  """Four non-decreasing inner steps summing to ``bits`` (48 -> [12, 12, 12, 12], 14 -> [3, 3, 4, 4])."""
  base, extra = divmod(bits, 4)
  return [base + (i >= 4 - extra) for i in range(4)]
