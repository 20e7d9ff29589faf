"""Building blocks of the BAR generator configs (``configs/bar_*.py``), with the reference key names:
``bar_generator_config`` (the released BAR models) and ``bar_on_maskbit_config`` (BAR on MaskBit LFQ bits).

``model.vq_model`` and ``model.generator`` are the released yamls'
(``configs/generator/bar_*.yaml``) ``model:`` section, value for value,
including their own sampling keys (``generator.guidance_scale``,
``mbm_head.randomize_temperature`` / ``tokens_allocation``), which are NOT the
evaluation settings. The settings the README reports its FID with live in
``sampling`` and are what ``bar_sampling_defaults`` returns.
"""

from __future__ import annotations

import ml_collections

from maskbit_jax import config_defaults as d
from maskbit_jax.models.tokenizer import latent_stride_of

SAMPLING_KEYS = ("guidance_scale", "randomize_temperature", "tokens_allocation")


def bar_generator_config(name: str, *, hidden_size: int, depth: int, heads: int, image_seq_len: int = 256,
                         token_size: int = 16, patch_size: int = 1, dropout: float = 0.0, attn_drop: float = 0.0,
                         anneal: tuple[int, int] = (125_000, 187_500), yaml_sampling: dict, sampling: dict,
                         resolution: int = 256, per_gpu_batch_size: int = 128,
                         max_train_steps: int = 250_000, warmup_steps: int = 62_500, head_width: int = 2048,
                         head_layers: int = 3, num_classes: int = 1000, repeat_class_condition: int = 32,
                         generator_checkpoint: str = "") -> ml_collections.ConfigDict:
  """A BAR generator config (reference nesting and values) plus this port's ``sampling`` and ``runtime``.

  ``yaml_sampling``: the yaml's ``guidance_scale`` / ``randomize_temperature`` /
  ``tokens_allocation``; ``sampling``: the released evaluation settings
  (same keys, plus ``tokenizer``, the tokenizer file they were measured with).
  """
  cfg = ml_collections.ConfigDict()
  cfg.experiment = dict(project="bar", name=name, output_dir=name, max_train_examples=1_281_167,
                        save_every=50_000, eval_every=5_000_000, generate_every=5000, log_every=50,
                        log_grad_norm_every=1000, resume=True,
                        tokenizer_checkpoint=f"assets/tokenizer/{sampling['tokenizer']}.bin",
                        generator_checkpoint=generator_checkpoint)
  generator = dict(hidden_size=hidden_size, num_hidden_layers=depth, num_attention_heads=heads,
                   class_label_dropout=0.1, image_seq_len=image_seq_len, condition_num_classes=num_classes,
                   target_codebook_size=2, use_checkpoint=False, randomness_anneal_start=anneal[0],
                   randomness_anneal_end=anneal[1], repeat_class_condition=repeat_class_condition)
  if patch_size != 1:
    generator["patch_size"] = patch_size
  if dropout or attn_drop:
    generator.update(dropout=dropout, attn_drop=attn_drop)
  generator["guidance_scale"] = yaml_sampling["guidance_scale"]
  generator["mbm_head"] = dict(width=head_width, num_layers=head_layers,
                               randomize_temperature=yaml_sampling["randomize_temperature"],
                               tokens_allocation=list(yaml_sampling["tokens_allocation"]))
  cfg.model = dict(name="bar_generator",
                   vq_model=dict(codebook_size=2 ** token_size, token_size=token_size, vit_dec_patch_size=16),
                   generator=generator)
  cfg.dataset = dict(preprocessing=dict(resize_shorter_edge=resolution, crop_size=resolution, random_crop=False,
                                        random_flip=True),
                     pretokenized="")
  cfg.optimizer = dict(name="adamw", params=dict(learning_rate=4e-4, beta1=0.9, beta2=0.96, weight_decay=0.03))
  cfg.lr_scheduler = dict(scheduler="cosine", params=dict(learning_rate=4e-4, warmup_steps=warmup_steps,
                                                          end_lr=1e-5))
  cfg.training = dict(compile_model=True, num_generated_images=10, gradient_accumulation_steps=1,
                      per_gpu_batch_size=per_gpu_batch_size, mixed_precision="bf16", enable_tf32=True,
                      enable_wandb=True, use_ema=False, seed=42, max_train_steps=max_train_steps, max_grad_norm=1.0)
  # The README's evaluation settings (gFID table), the defaults of this port's sampler.
  cfg.sampling = dict(guidance_scale=sampling["guidance_scale"],
                      randomize_temperature=sampling["randomize_temperature"],
                      tokens_allocation=list(sampling["tokens_allocation"]), tokenizer=sampling["tokenizer"])
  # Compute settings of this port: compute dtype and matmul precision ("default", "high", "highest").
  cfg.runtime = dict(dtype="float32", precision="default")
  return cfg


def bar_fields(cfg: ml_collections.ConfigDict) -> dict:
  """Flat fields for ``models.bar_generator.build_bar_module`` from a config with the reference nesting."""
  try:
    gen, vq = cfg.model.generator, cfg.model.vq_model
  except (AttributeError, KeyError):
    raise ValueError("config has no model.generator / model.vq_model section (is this a BAR config?)") from None
  head = gen.get("mbm_head", {}) or {}
  return dict(hidden_size=int(gen.hidden_size), depth=int(gen.num_hidden_layers),
              num_heads=int(gen.num_attention_heads),
              image_seq_len=int(gen.image_seq_len), token_bits=int(vq.token_size),
              patch_size=int(gen.get("patch_size", 1)), latent_height=gen.get("latent_height", None),
              latent_width=gen.get("latent_width", None), num_classes=int(gen.condition_num_classes),
              target_codebook_size=int(gen.target_codebook_size),
              repeat_class_condition=int(gen.get("repeat_class_condition", 32)),
              dropout=float(gen.get("dropout", 0.0)), head_width=int(head.get("width", 2048)),
              head_layers=int(head.get("num_layers", 3)), remat_policy=str(gen.get("remat_policy", "full" if gen.get("use_checkpoint", False) else "none")),
              class_label_dropout=float(gen.get("class_label_dropout", 0.0)))


def bar_sampling_defaults(cfg: ml_collections.ConfigDict) -> dict:
  """``guidance_scale``, ``randomize_temperature``, ``tokens_allocation``: the ``sampling`` section when
  present (released evaluation settings), else the yaml's ``model.generator`` keys."""
  gen = cfg.model.generator
  out = dict(guidance_scale=float(gen.get("guidance_scale", 1.0)))
  head = gen.get("mbm_head", {}) or {}
  if "randomize_temperature" in head:
    out["randomize_temperature"] = float(head["randomize_temperature"])
  if "tokens_allocation" in head:
    out["tokens_allocation"] = tuple(int(v) for v in head["tokens_allocation"])
  sampling = cfg.get("sampling", None) or {}
  for key in SAMPLING_KEYS:
    if key in sampling:
      value = sampling[key]
      out[key] = tuple(int(v) for v in value) if key == "tokens_allocation" else float(value)
  return out


def bar_on_maskbit_config(name: str, vq: dict, *, tokenizer_name: str, resolution: int, hidden_size: int,
                          depth: int, heads: int, num_classes: int, sampling: dict, head_width: int = 2048,
                          head_layers: int = 3, repeat_class_condition: int = 32, per_gpu_batch_size: int = 128,
                          max_train_steps: int = 250_000, warmup_steps: int = 62_500,
                          anneal: tuple[int, int] | None = None, patch_size: int = 1,
                          source: str = "tfds:imagenet2012:train",
                          eval_source: str = "tfds:imagenet2012:validation") -> ml_collections.ConfigDict:
  """A BAR generator config on a MaskBit LFQ tokenizer's bits (not a released model; the BAR recipe otherwise).

  ``vq``: the tokenizer's ``model.vq_model`` (``config_defaults.vq_model``); the
  token grid follows from ``resolution`` and its stride; ``patch_size``: tokens a side per AR step (the
  step then predicts ``patch_size**2 * token_size`` bits, as BAR-B/2 does). ``anneal``: the random
  to raster order ramp, by default over 50 % .. 75 % of the steps (as BAR-B's
  125k .. 187.5k of 250k). ``sampling``: ``guidance_scale``,
  ``randomize_temperature``, ``tokens_allocation``. Data: images of
  ``dataset.source``, resized + centre-cropped + flipped with p = 1/2 (BAR's ADM
  crop), encoded by the frozen tokenizer inside the step; or a
  ``dataset.pretokenized`` token set (``python -m maskbit_jax.pretokenize``).
  """
  if vq.get("quantizer_type") != "lookup-free":
    raise ValueError("BAR on MaskBit tokens needs a lookup-free (bit) tokenizer: vq_model.quantizer_type")
  side = resolution // latent_stride_of(vq)
  anneal = anneal or (max_train_steps // 2, max_train_steps * 3 // 4)
  cfg = bar_generator_config(
      name, hidden_size=hidden_size, depth=depth, heads=heads, image_seq_len=side * side,
      token_size=int(vq["token_size"]), patch_size=patch_size, anneal=anneal, yaml_sampling=sampling,
      sampling=dict(sampling, tokenizer=tokenizer_name), resolution=resolution, per_gpu_batch_size=per_gpu_batch_size,
      max_train_steps=max_train_steps, warmup_steps=warmup_steps, head_width=head_width, head_layers=head_layers,
      num_classes=num_classes, repeat_class_condition=repeat_class_condition)
  cfg.model.vq_model = dict(vq)
  run = d.training_run(save_every=cfg.experiment.save_every, generate_every=cfg.experiment.generate_every,
                       eval_every=0, source=source, eval_source=eval_source)
  # the frozen MaskBit tokenizer (on-the-fly bits and sample decoding); BAR's own key is unused here
  cfg.experiment.update(run["cadence"], vqgan_checkpoint="", tokenizer_checkpoint="")
  cfg.dataset = dict(preprocessing=dict(resolution=resolution, use_random_crop=False, use_aspect_ratio_aug=False,
                                        min_scale=1.0, interpolation="bilinear", random_flip=True),
                     pretokenized="", **run["data"])
  cfg.training.global_batch_size = 0  # > 0: fixed global batch instead of per_gpu_batch_size x devices
  # mesh axis sizes over the first num_devices devices (0: all), checkpoints kept
  cfg.runtime.update(mesh=dict(data=-1, fsdp=1, tensor=1), num_devices=0, keep_checkpoints=3)
  return cfg
