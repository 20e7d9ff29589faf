"""A tiny LFQ VQGAN+ tokenizer (12 bits, 32 channels, 16 px -> 8x8 tokens) for tests, demos and CPU training.

  python -m maskbit_jax.train --config configs/tokenizer_tiny.py --workdir runs/tok
  python -m maskbit_jax.reconstruct --checkpoint runs/tok/export/tokenizer --out out/recon
  --config=configs/tokenizer_tiny.py:bits=10   other bit counts

The training recipe is the released one (losses, AdamW, warm-up + cosine with
floor, EMA) scaled down to under two minutes on 2 CPU cores: the embedded
synthetic set at 16 px, batch 16, 1000 steps, a higher learning rate, a smaller
commitment cost and no entropy term (why: ``config_defaults.tiny_vq_model``), no
random crops (the set already varies position and scale; the crop's resampling
cost 0.6 dB) and no adversarial phase (``losses.discriminator_start`` past the
last step: at this length the GAN term costs a second compile and PSNR; set it
below ``training.max_train_steps`` to train the discriminator too). The
perceptual weight is 0 because the ResNet50 ImageNet weights are a download
(set ``losses.perceptual_checkpoint`` and ``losses.perceptual_weight`` to use it).
"""

from maskbit_jax import config_defaults as d

STEPS = 1000


def get_config(arg: str = ""):
  opts = dict(kv.split("=") for kv in arg.split(",") if kv)
  bits = int(opts.get("bits", 12))
  cfg = d.tokenizer_config("tokenizer_tiny", d.tiny_vq_model(bits),
                           disc=d.discriminator(hidden_channels=32, num_stages=3), resolution=d.TINY_RESOLUTION)
  cfg.losses.update(perceptual_weight=0.0, discriminator_start=100_000)
  cfg.optimizer.params.update(learning_rate=2e-3, discriminator_learning_rate=1e-4)
  cfg.lr_scheduler.params.update(learning_rate=2e-3, warmup_steps=30)
  cfg.training.update(per_gpu_batch_size=16, max_train_steps=STEPS, num_generated_images=8)
  # The in-training evaluation once, at the end, on the 64 held-out images (PSNR, SSIM; rFID, IS and LPIPS with
  # --config.evaluation.inception_checkpoint / lpips_checkpoint).
  cfg.experiment.update(save_every=STEPS, log_every=100, generate_every=STEPS, eval_every=STEPS, eval_images=64)
  cfg.evaluation.batch_size = 32
  # Train on 4096 synthetic images; evaluate on others (another seed of the same generator).
  cfg.dataset.update(source=d.TINY_SOURCE, eval_source=d.TINY_EVAL_SOURCE, num_threads=2)
  cfg.dataset.preprocessing.update(use_random_crop=False, use_aspect_ratio_aug=False, min_scale=1.0)
  return cfg
