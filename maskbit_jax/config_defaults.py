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


# The tiny models of configs/tokenizer_tiny.py and configs/generator_tiny.py: 16 px images of the embedded
# synthetic set (16 classes), two tokenizer levels (stride 2) -> 8 x 8 tokens of 12 bits, one residual block a
# level and the narrowest width GroupNorm's 32 groups allow, so that the whole tiny recipe runs in minutes on 2 CPU
# cores. Chosen by held-out PSNR on that budget (2026-12-03, 2 cores): even without a quantizer this encoder and
# decoder reach only 20 dB in 600 steps at 32 px / stride 4, but 24.7 dB at 16 px / stride 2. The quantizer's
# losses are set for that length too: the released commitment cost of 0.25 pulls the latents onto the +-1
# corners before the decoder has learnt from them (0.25: 21.6 dB after 1200 steps; 0.02: 21.8 dB after 900), and
# the entropy term, which needs all 2^12 codes' probabilities for every token, costs most of each step and 2.4 dB
# (off: 24.2 dB after 900 steps; the tokens then use about a tenth of the codebook).
TINY_RESOLUTION = 16
TINY_NCLASS = 16
TINY_SOURCE = "synthetic:4096"
TINY_EVAL_SOURCE = "synthetic:64:1"  # another seed: images never seen in training


def tiny_vq_model(bits: int = 12) -> dict:
  return vq_model(token_size=bits, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, commitment_cost=0.02,
                  entropy_loss_weight=0.0)


def discriminator(hidden_channels=128, num_stages=4) -> dict:
  return dict(name="VQGAN+Discriminator", num_channels=3, num_stages=num_stages,
              hidden_channels=hidden_channels, blur_resample=True, blur_kernel_size=4)


# ``dataset.preprocessing`` of the training images (data/webdataset_reader.py's train transform, read by
# augment.train_transform): RandomResizedCrop(scale=(min_scale, 1), ratio 3/4..4/3 with use_aspect_ratio_aug,
# else 1), resized with ``interpolation``, then a random flip. ``random_flip`` is this port's key (the reference
# always flips after its random crop). Stage I (configs/tokenizer/*.yaml):
TOKENIZER_PREPROCESSING = dict(use_aspect_ratio_aug=True, use_random_crop=True, min_scale=0.8, interpolation="bilinear",
                               random_flip=True)
# Stage II (all seven configs/generator/*.yaml; scripts/train_maskbit.py passes them to its loader): square
# crops only, bicubic resampling.
GENERATOR_PREPROCESSING = dict(TOKENIZER_PREPROCESSING, use_aspect_ratio_aug=False, interpolation="bicubic")


def tokenizer_config(name: str, vq: dict, *, disc: dict | None = None, resolution: int = 256,
                     checkpoint: str = "", recipe: bool = True) -> ml_collections.ConfigDict:
  """A tokenizer config with the reference's sections (``experiment``, ``model``, ``dataset``, ``training``).

  With ``recipe``, the released stage-I ``dataset.preprocessing``; with a discriminator too, the
  released stage-I training recipe (``configs/tokenizer/*.yaml``: losses, optimizer, schedule, training).
  """
  cfg = ml_collections.ConfigDict()
  cfg.experiment = dict(project="MaskBit", name=name, vqgan_checkpoint=checkpoint, seed=42)
  cfg.model = dict(name="maskbit_tokenizer", vq_model=vq)  # the family (maskbit_jax.registry); its variant: vq
  if disc is not None:
    cfg.model.discriminator = disc
  cfg.dataset = dict(preprocessing=dict(resolution=resolution))
  if recipe:  # the released stage-I data (also what the external tokenizers' yamls carry)
    cfg.dataset.preprocessing.update(TOKENIZER_PREPROCESSING)
  # Compute settings of this port (no reference equivalent): compute dtype and
  # matmul/conv precision ("default", "high", "highest").
  cfg.runtime = dict(dtype="float32", precision="default")
  if disc is not None and recipe:
    _add_tokenizer_recipe(cfg, vq)
  return cfg


def training_run(*, save_every: int, log_every: int = 50, generate_every: int, eval_every: int,
                 source: str = "tfds:imagenet2012:train", eval_source: str = "tfds:imagenet2012:validation") -> dict:
  """Run settings shared by both stages: the reference's cadence keys plus this port's data and mesh keys."""
  return dict(
      # eval_images: images of the in-training evaluation (stage I: held-out reconstructions, stage II:
      # class-balanced samples; 0 = none), every eval_every steps and at the end; see ``evaluation`` below.
      # profile: a jax.profiler trace of num_steps steps after start_step into workdir/profile (0 steps: off).
      cadence=dict(save_every=save_every, log_every=log_every, generate_every=generate_every, eval_every=eval_every,
                   eval_images=0, profile=dict(start_step=10, num_steps=0)),
      # ``dataset.source``: ``synthetic:N``, ``photos``, ``tfds:NAME:SPLIT[:DATA_DIR]`` or a folder with one
      # sub-folder per class. ``corrupt_images``: "error" stops at an unreadable image, "skip" counts and warns.
      data=dict(source=source, eval_source=eval_source, corrupt_images="error", num_threads=8,
                prefetch_buffer_size=16),
  )


def _add_run_sections(cfg: ml_collections.ConfigDict, run: dict, keep_checkpoints: int = 3) -> None:
  cfg.experiment.update(run["cadence"])
  cfg.dataset.update(run["data"])
  # Mesh axis sizes (-1: all remaining devices) over the first ``num_devices`` devices (0: all of them),
  # and how many checkpoints to keep. ``dcn_mesh``: the part of each axis across TPU slices (or, where
  # devices name no slice, processes); ``mesh`` is then per slice (docs/capacity.md).
  cfg.runtime.mesh = dict(data=-1, fsdp=1, tensor=1)
  cfg.runtime.dcn_mesh = dict(data=1, fsdp=1, tensor=1)
  cfg.runtime.num_devices = 0
  cfg.runtime.keep_checkpoints = keep_checkpoints
  cfg.evaluation = evaluation()


def evaluation(**overrides) -> dict:
  """This port's ``evaluation`` section: the weights files of the in-training evaluation (the files
  ``python -m maskbit_jax.evaluate`` takes; empty = the metrics that need one are skipped, with a note).

  ``inception_checkpoint``: the FID Inception (pt_inception-2015-12-05-6726825d.pth): stage I rFID and IS,
  stage II FID and IS. ``lpips_checkpoint`` (+ ``vgg16_checkpoint`` when it holds the heads only): stage I
  LPIPS. ``ref_stats``: ADM reference statistics (.npz) for stage II FID (IS only without). ``batch_size``:
  a multiple of the local devices; ``seed``: of the stage II samples (the CLI's --seed).
  """
  return dict(dict(inception_checkpoint="", lpips_checkpoint="", vgg16_checkpoint="", ref_stats="", batch_size=32,
                   seed=0), **overrides)


def _add_tokenizer_recipe(cfg: ml_collections.ConfigDict, vq: dict) -> None:
  lookup_free = vq.get("quantizer_type") == "lookup-free"
  cfg.losses = dict(
      quantizer_weight=1.0, perceptual_loss="resnet50", perceptual_weight=0.1, perceptual_loss_on_logits=True,
      reconstruction_loss="l2", reconstruction_weight=4.0, discriminator_start=20_000, discriminator_loss="hinge",
      discriminator_factor=1.0, discriminator_weight=0.02, discriminator_gradient_penalty="none",
      discriminator_penalty_cost=10.0, lecam_regularization_weight=0.001, entropy_annealing_steps=2000,
      entropy_annealing_factor=2.0 if lookup_free else 0.0,
      # The quantizer's entropy terms over each reference GPU's images (training.per_gpu_batch_size of them),
      # as the released runs took them; "batch": over the whole batch at once (train.tokenizer_step).
      entropy_over="device",
      # This port: the converted torchvision ResNet50 (IMAGENET1K_V1) file the perceptual loss needs.
      perceptual_checkpoint="")
  # experiment.init_checkpoint: a checkpoint step folder (<workdir>/checkpoints/<step>) a NEW run starts from,
  # whole (weights, optimizer, EMA, step), as scripts/train_tokenizer.py's load_checkpoint does; a workdir with
  # its own checkpoints resumes from those instead. log_grad_norm_every: per-parameter gradient norms.
  cfg.experiment.update(log_grad_norm_every=100_000, init_checkpoint="")
  cfg.optimizer = dict(name="adamw", params=dict(learning_rate=1e-4, discriminator_learning_rate=1e-4,
                                                 scale_lr=False, beta1=0.9, beta2=0.999, weight_decay=1e-4,
                                                 epsilon=1e-8))
  cfg.lr_scheduler = dict(scheduler="cosine_with_minimum", params=dict(learning_rate=1e-4, warmup_steps=5000))
  cfg.training = dict(gradient_accumulation_steps=1, per_gpu_batch_size=16, mixed_precision="no", use_ema=True,
                      seed=42, max_train_steps=1_350_000, max_grad_norm=1.0, num_generated_images=2,
                      overfit_batch=False, overfit_batch_num=1, global_batch_size=0)
  _add_run_sections(cfg, training_run(save_every=20_000, generate_every=2000, eval_every=20_000))


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
  cfg = tokenizer_config(name, vq, resolution=resolution, checkpoint=tokenizer_checkpoint, recipe=False)
  cfg.experiment.generator_checkpoint = generator_checkpoint
  cfg.model.name = "maskbit_generator"
  cfg.model.mlm_model = mlm
  cfg.model.nclass = nclass  # not in the reference yamls (ImageNet's 1000 is hard-coded there)
  cfg.losses = dict(mlm=dict(label_smoothing=0.1, sum_splits=False))
  # The released generator recipe (configs/generator/*.yaml).
  cfg.optimizer = dict(name="adamw", params=dict(learning_rate=1e-4, beta1=0.9, beta2=0.96, weight_decay=0.045,
                                                 epsilon=1e-8))
  cfg.lr_scheduler = dict(scheduler="cosine_with_minimum", params=dict(learning_rate=1e-4, warmup_steps=5000))
  # num_generated_images: how many images' tokens are drawn beside the model's predicted tokens (the reference's
  # "Train Decoded", of its training batch; here of dataset.eval_source); the sample grid has the reference
  # sampler's fixed 10 images. log_grad_norm_every: per-parameter gradient norms.
  cfg.training = dict(gradient_accumulation_steps=1, per_gpu_batch_size=32, mixed_precision="no", use_ema=True,
                      seed=42, max_train_steps=1_350_000, max_grad_norm=1.0, num_generated_images=4,
                      overfit_batch=False, overfit_batch_num=1, global_batch_size=0)
  cfg.experiment.log_grad_norm_every = 100_000
  cfg.dataset.preprocessing.update(GENERATOR_PREPROCESSING)
  # ``dataset.pretokenized``: a folder written by ``python -m maskbit_jax.pretokenize`` (tokens of each image and
  # its flip); empty = tokens made on the fly by the frozen tokenizer inside the train step.
  cfg.dataset.pretokenized = ""
  _add_run_sections(cfg, training_run(save_every=100_000, generate_every=10_000, eval_every=100_000))
  return cfg
