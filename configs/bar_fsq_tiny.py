"""A tiny BAR-FSQ tokenizer (SigLIP2-style encoder, binary FSQ, ViT decoder) that trains on CPU in minutes.

  python -m maskbit_jax.train --config configs/bar_fsq_tiny.py --workdir runs/bar_fsq_tiny

The released recipe (``configs/bar_fsq_16bits.py``: its losses, both AdamWs, encoder lr multiplier,
warm-up + cosine to a floor, EMA) scaled down: the embedded synthetic images at the tiny resolution
(16 px), 4 px patches (4x4 tokens of 12 bits), width-32 towers, a higher learning rate. The terms whose
frozen networks are downloads (perceptual, Gram) have weight 0 and the discriminator phase starts past
the last step, as in ``tokenizer_tiny``; set ``loss_networks.*_checkpoint`` /
``model.discriminator.dino_ckpt_path`` and the weights to train with them. The CLIP-alignment term runs
against the model's own frozen encoder copy (randomly initialised here, pretrained SigLIP2 in the release).

Tiny-only start (the release starts from pretrained SigLIP2, whose features do both by themselves): the
random tower starts as a fresh SigLIP2 model (content louder than position in its frozen embeddings) and
``experiment.fsq_bias_at_threshold`` centres the pre-quantiser values on binary FSQ's threshold (-3.8),
so the bits vary with the image and pass gradient from the first step (see ``train/bar_fsq_task.py``).
Without them this run learns the mean image only (16.2 dB held-out PSNR; 19.2 dB with them).
"""

from maskbit_jax import config_defaults as d
from maskbit_jax.models.bar_tokenizer import bar_fsq_config

STEPS = 200
BITS = 12
PATCH = 4  # 4x4 tokens at 16 px


def get_config():
  cfg = bar_fsq_config("bar_fsq_tiny", token_size=BITS, crop_size=d.TINY_RESOLUTION)
  cfg.model.vq_model.update(vit_dec_patch_size=PATCH, clip_align_layer_id=0)
  cfg.model.siglip2.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=PATCH, num_patches=(d.TINY_RESOLUTION // PATCH) ** 2)
  cfg.model.vit_decoder.update(width=32, num_layers=2, num_heads=2)  # CLIP alignment after block 0 of 2
  cfg.losses.update(perceptual_weight=0.0, gram_loss_weight=0.0, discriminator_start=100_000)
  cfg.optimizer.params.update(learning_rate=2e-3, discriminator_learning_rate=2e-3)
  cfg.lr_scheduler.params.update(learning_rate=2e-3, warmup_steps=20, end_lr=2e-4)
  cfg.training.update(per_gpu_batch_size=16, max_train_steps=STEPS, num_generated_images=8, mixed_precision="no",
                      enable_wandb=False)
  cfg.experiment.update(save_every=STEPS, log_every=25, generate_every=STEPS, eval_every=STEPS, eval_images=64,
                        log_grad_norm_every=STEPS)
  cfg.experiment.siglip2_checkpoint = "random"  # no pretrained tower at this size
  cfg.experiment.fsq_bias_at_threshold = True  # tiny-only: see the docstring
  cfg.dataset.update(source=d.TINY_SOURCE, eval_source=d.TINY_EVAL_SOURCE, num_threads=2)
  cfg.dataset.preprocessing.update(resize_shorter_edge=d.TINY_RESOLUTION)
  return cfg
