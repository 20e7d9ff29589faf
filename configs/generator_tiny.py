"""A tiny MaskBit generator on the tiny 12-bit tokenizer (16 px, 8x8 tokens, 16 classes) for tests, demos and CPU runs.

  python -m maskbit_jax.train --config configs/generator_tiny.py --workdir runs/gen \
      --config.experiment.vqgan_checkpoint=runs/tok/export/tokenizer
  python -m maskbit_jax.sample --generator runs/gen/export/generator --classes 1,2,3 --out out/tiny

The released stage-II recipe (AdamW, warm-up + cosine with floor, arccos
masking, label smoothing, label dropout, EMA) scaled down to two minutes on 2
CPU cores: the embedded synthetic set (16 classes), batch 32, 1500 steps, a
higher learning rate; the targets come from the frozen tiny tokenizer inside
the step. At the end it reports the class accuracy of 128 class-balanced
samples (the packaged synthetic-set classifier) and the tokenizer's held-out PSNR.
"""

from maskbit_jax import config_defaults as d

STEPS = 1500


def get_config(arg: str = ""):
  opts = dict(kv.split("=") for kv in arg.split(",") if kv)
  bits = int(opts.get("bits", 12))
  mlm = d.mlm_model(hidden_dim=64, depth=2, heads=4, mlp_dim=128, dropout=0.0, codebook_splits=2,
                    sampling=dict(guidance_scale=3.0, randomize_temperature=4.5, scale_pow=3.0, num_steps=8))
  cfg = d.generator_config("generator_tiny", d.tiny_vq_model(bits), mlm, resolution=d.TINY_RESOLUTION,
                           nclass=d.TINY_NCLASS)
  cfg.optimizer.params.update(learning_rate=3e-3)
  cfg.lr_scheduler.params.update(learning_rate=3e-3, warmup_steps=30)
  cfg.training.update(per_gpu_batch_size=32, max_train_steps=STEPS, num_generated_images=8)
  # The in-training evaluation once, at the end, on 128 class-balanced samples: their class accuracy and the
  # tokenizer's held-out PSNR (the synthetic set's figures); FID / IS too with
  # --config.evaluation.inception_checkpoint (and evaluation.ref_stats for FID).
  cfg.experiment.update(save_every=STEPS, log_every=100, generate_every=STEPS, eval_every=STEPS, eval_images=128)
  cfg.evaluation.batch_size = 32
  cfg.dataset.update(source=d.TINY_SOURCE, eval_source=d.TINY_EVAL_SOURCE, num_threads=2)
  return cfg
