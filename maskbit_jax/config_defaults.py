"""Building blocks for the ``configs/*.py`` files (reference key names and values)."""

from __future__ import annotations

import ml_collections


def vq_model(*, model_class="vqgan+", quantizer_type="lookup-free", token_size=12, codebook_size=None,
             hidden_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, sample_with_conv=True,
             commitment_cost=0.25, entropy_loss_weight=0.02, entropy_loss_temperature=0.01,
             entropy_gamma=1.0, num_channels=3) -> dict:
  if codebook_size is None:
    codebook_size = 2**token_size
  return dict(
      model_class=model_class, quantizer_type=quantizer_type, codebook_size=codebook_size,
      token_size=token_size, commitment_cost=commitment_cost, entropy_loss_weight=entropy_loss_weight,
      entropy_loss_temperature=entropy_loss_temperature, entropy_gamma=entropy_gamma,
      num_channels=num_channels, hidden_channels=hidden_channels, channel_mult=list(channel_mult),
      num_resolutions=len(channel_mult), num_res_blocks=num_res_blocks, sample_with_conv=sample_with_conv)


def discriminator(hidden_channels=128, num_stages=4) -> dict:
  return dict(name="VQGAN+Discriminator", num_channels=3, num_stages=num_stages,
              hidden_channels=hidden_channels, blur_resample=True, blur_kernel_size=4)


def tokenizer_config(name: str, vq: dict, *, disc: dict | None = None, resolution: int = 256,
                     checkpoint: str = "") -> ml_collections.ConfigDict:
  """A tokenizer config with the reference's sections (``experiment``, ``model``, ``dataset``, ``training``)."""
  cfg = ml_collections.ConfigDict()
  cfg.experiment = dict(project="MaskBit", name=name, vqgan_checkpoint=checkpoint, seed=42)
  cfg.model = dict(vq_model=vq)
  if disc is not None:
    cfg.model.discriminator = disc
  cfg.dataset = dict(preprocessing=dict(resolution=resolution))
  # Compute settings of this port (no reference equivalent): compute dtype and
  # matmul/conv precision ("default", "high", "highest").
  cfg.runtime = dict(dtype="float32", precision="default")
  return cfg


def mlm_model(*, hidden_dim=1024, depth=24, heads=16, mlp_dim=4096, dropout=0.1, codebook_splits=2,
              use_prenorm=False, sampling: dict | None = None) -> dict:
  """``model.mlm_model`` with the reference keys; ``sampling`` adds the sampler/training keys of the released yamls."""
  out = dict(model_cls="lfq_bert", hidden_dim=hidden_dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
             dropout=dropout)
  if sampling is not None:
    out.update(guidance_scale=sampling["guidance_scale"], guidance_annealing=sampling.get("guidance_annealing", "cosine"),
               num_steps=sampling.get("num_steps", 64), train_mask_schedule_strategy="arccos",
               gen_mask_schedule_strategy=sampling.get("gen_mask_schedule_strategy", "arccos"),
               softmax_temperature=sampling.get("softmax_temperature", 1.0),
               randomize_temperature=sampling["randomize_temperature"], class_label_dropout=0.1,
               scale_pow=sampling["scale_pow"], use_sampling_annealing=sampling.get("use_sampling_annealing", False))
  out.update(codebook_splits=codebook_splits, use_prenorm=use_prenorm)
  return out


def generator_config(name: str, vq: dict, mlm: dict, *, resolution: int = 256, nclass: int = 1000,
                     tokenizer_checkpoint: str = "", generator_checkpoint: str = "") -> ml_collections.ConfigDict:
  """A generator config (reference nesting) with the tokenizer it runs on."""
  cfg = tokenizer_config(name, vq, resolution=resolution, checkpoint=tokenizer_checkpoint)
  cfg.experiment.generator_checkpoint = generator_checkpoint
  cfg.model.mlm_model = mlm
  cfg.model.nclass = nclass  # not in the reference yamls (ImageNet's 1000 is hard-coded there)
  cfg.losses = dict(mlm=dict(label_smoothing=0.1, sum_splits=False))
  # The released generator recipe (configs/generator/*.yaml).
  cfg.optimizer = dict(name="adamw", params=dict(learning_rate=1e-4, beta1=0.9, beta2=0.96, weight_decay=0.045,
                                                 epsilon=1e-8))
  cfg.lr_scheduler = dict(scheduler="cosine_with_minimum", params=dict(learning_rate=1e-4, warmup_steps=5000))
  cfg.training = dict(gradient_accumulation_steps=1, per_gpu_batch_size=32, mixed_precision="no", use_ema=True,
                      seed=42, max_train_steps=1_350_000, max_grad_norm=1.0)
  return cfg
