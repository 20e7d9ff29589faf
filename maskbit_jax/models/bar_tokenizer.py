"""The BAR tokenizer ("BAR-FSQ"): SigLIP2 encoder -> binary FSQ -> ViT decoder, NHWC images in [-1, 1].

``encode`` gives the bits the generator is trained on (``[B, cells, K]`` in
{0, 1}, cells row-major); ``decode_bits`` turns generated bits back into images.
Built from a config with the reference's nesting (``model.vq_model``,
``dataset.preprocessing.crop_size``, ``losses.clip_loss_weight``) plus two
port-only sections for what the reference hard-codes: ``model.siglip2`` (the
SigLIP2 vision config, Hugging Face key names) and ``model.vit_decoder``
(``width``, ``num_layers``, ``num_heads``).

``with_encoder=False`` builds the decode-only tokenizer (decoder plus FSQ
``out_proj``), which is all that sampling needs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from maskbit_jax.models import layers
from maskbit_jax.models.bar_encoder import BarSiglip2Encoder
from maskbit_jax.models.bar_fsq import LEVELS, BinaryFSQ, unpack_bits
from maskbit_jax.models.bar_vit_decoder import CLIP_TARGET_WIDTH, BarViTDecoder
# The released sizes live with the typed config; imported here for their users.
from maskbit_jax.models.model_config import SIGLIP2_SO400M, VIT_DECODER_L, BarTokenizerConfig  # noqa: F401

class BarTokenizer(nn.Module):
  """``BAR_FSQ``: submodules ``encoder``, ``quantize``, ``decoder`` (the reference's names)."""

  token_size: int = 16
  image_size: int = 256
  # decoder (SigLIP2Decoder)
  dec_width: int = 1024
  dec_layers: int = 24
  dec_heads: int = 16
  dec_patch_size: int = 16
  clip_align: bool = False
  clip_align_layer_id: int = 2
  clip_target_width: int = CLIP_TARGET_WIDTH
  # encoder (SigLIP2 vision tower)
  with_encoder: bool = True
  enc_width: int = 1152
  enc_layers: int = 27
  enc_heads: int = 16
  enc_mlp_dim: int = 4304
  enc_num_patches: int = 256
  enc_patch_size: int = 16
  enc_layer_norm_eps: float = 1e-6
  enc_hidden_act: str = "gelu_pytorch_tanh"
  num_channels: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @property
  def grid_size(self) -> int:
    return self.image_size // self.dec_patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid_size ** 2

  @property
  def codebook_size(self) -> int:
    return LEVELS ** self.token_size

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    if self.with_encoder:
      self.encoder = BarSiglip2Encoder(self.enc_width, self.enc_layers, self.enc_heads, self.enc_mlp_dim,
                                       self.enc_num_patches, self.enc_patch_size, self.num_channels,
                                       self.enc_layer_norm_eps, self.enc_hidden_act, **kw)
    self.quantize = BinaryFSQ(self.token_size, self.enc_width, self.dec_width, with_in_proj=self.with_encoder,
                              param_dtype=self.param_dtype, precision=self.precision)
    self.decoder = BarViTDecoder(self.grid_size, self.dec_patch_size, self.dec_width, self.dec_layers, self.dec_heads,
                                 out_channels=self.num_channels, clip_align=self.clip_align,
                                 clip_align_layer_id=self.clip_align_layer_id,
                                 clip_target_width=self.clip_target_width, **kw)

  def _check_images(self, images_bhwc):
    if not self.with_encoder:
      raise ValueError("this BarTokenizer was built without its encoder (decode only)")
    if images_bhwc.shape[1:] != (self.image_size, self.image_size, self.num_channels):
      raise ValueError(f"expected [B, {self.image_size}, {self.image_size}, {self.num_channels}] images, "
                       f"got {images_bhwc.shape}")

  def encode(self, images_bhwc: jax.Array, return_clip_gt: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Images -> (``z_quantized`` ``[B, L, dec_width]``, results).

    Results: ``min_encoding_indices`` (int32 bits ``[B, L, K]``), ``codes``
    (+-1), ``pre_quant`` (``in_proj`` output), ``z`` (encoder features) and,
    with ``return_clip_gt``, ``clip_gt`` (the frozen SigLIP2 features).
    """
    self._check_images(images_bhwc)
    z, clip_gt = self.encoder(images_bhwc, return_clip_gt=return_clip_gt)
    z_quantized, result = self.quantize(z)
    result = dict(result, z=z)
    if return_clip_gt:
      result["clip_gt"] = clip_gt
    return z_quantized, result

  def encode_bits(self, images_bhwc: jax.Array) -> jax.Array:
    """Images -> int32 bits ``[B, L, K]`` (the frozen copy is skipped)."""
    return self.encode(images_bhwc, return_clip_gt=False)[1]["min_encoding_indices"]

  def decode(self, z_quantized: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Decoder tokens ``[B, L, dec_width]`` -> (images ``[B, H, W, 3]``, ``clip_pred`` or None)."""
    return self.decoder(z_quantized)

  def decode_bits(self, bits: jax.Array) -> jax.Array:
    """Bits ``[B, L*K]`` (the generator's layout) or ``[B, L, K]`` -> images (the reference ``decode_tokens``)."""
    return self.decode(self.quantize.get_codebook_entry(bits))[0]

  def decode_indices(self, indices_bl: jax.Array) -> jax.Array:
    """Packed indices ``[B, L]`` (``bar_fsq.pack_bits``) -> images."""
    return self.decode_bits(unpack_bits(indices_bl, self.token_size))

  def __call__(self, images_bhwc: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The reference ``forward``: encode, quantise, decode; results gain ``clip_pred``."""
    z_quantized, result = self.encode(images_bhwc)
    decoded, clip_pred = self.decode(z_quantized)
    result["clip_pred"] = clip_pred
    return decoded, result

  def init_all(self, images_bhwc: jax.Array) -> jax.Array:
    """Traces every parameter (``module.init(key, images, method=BarTokenizer.init_all)``)."""
    if self.with_encoder:
      return self(images_bhwc)[0]
    bits = jnp.zeros((images_bhwc.shape[0], self.num_tokens, self.token_size), jnp.int32)
    return self.decode(self.quantize.get_codebook_entry(bits))[0]


def bar_tokenizer_from_config(config: Any, *, with_encoder: bool = True, dtype: Any = jnp.float32,
                              param_dtype: Any = jnp.float32, precision: Any = None) -> BarTokenizer:
  """A ``BarTokenizer`` from its typed config (``BarTokenizerConfig.from_config(cfg)``) or a config with the
  reference's nesting (see the module docstring)."""
  c = config if isinstance(config, BarTokenizerConfig) else BarTokenizerConfig.from_config(config)
  if with_encoder and c.enc_patch_size != c.dec_patch_size:
    raise ValueError(f"encoder patch {c.enc_patch_size} != decoder patch {c.dec_patch_size}: the token grids differ")
  return BarTokenizer(**c.fields(), with_encoder=with_encoder, dtype=dtype, param_dtype=param_dtype,
                      precision=precision)


def _init_images(module: BarTokenizer) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, module.image_size, module.image_size, module.num_channels), jnp.float32)


def abstract_bar_tokenizer_params(module: BarTokenizer) -> Any:
  """The (boxed) param tree as ShapeDtypeStructs, nothing allocated."""
  images = _init_images(module)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(images.shape, images.dtype),
                                            method=BarTokenizer.init_all))["params"]


def init_bar_tokenizer_params(module: BarTokenizer, key: jax.Array) -> Any:
  """Freshly initialised (boxed) params."""
  images = _init_images(module)
  init = lambda k, x: module.init(k, x, method=BarTokenizer.init_all)["params"]
  return layers.jit_init(init)(key, jnp.zeros(images.shape, images.dtype))


def bar_fsq_config(name: str, *, token_size: int, crop_size: int, checkpoint: str = ""):
  """A released BAR-FSQ tokenizer config (``configs/tokenizer/<name>.yaml`` of the reference) as a ConfigDict.

  Every reference section and value is kept; ``model.siglip2`` and
  ``model.vit_decoder`` (port only) spell out what the reference hard-codes, and
  ``runtime`` holds this port's compute settings.
  """
  import ml_collections

  cfg = ml_collections.ConfigDict()
  cfg.experiment = dict(project="bar_fsq", name=name, output_dir=name, max_train_examples=1281167, save_every=25000,
                        eval_every=25000, generate_every=5000, log_every=50, log_grad_norm_every=1000, resume=True,
                        logging_dir=f"{name}/logs", tokenizer_checkpoint=checkpoint, init_checkpoint="",
                        siglip2_checkpoint="")
  cfg.model = dict(
      name="bar_fsq_tokenizer",
      vq_model=dict(codebook_size=LEVELS ** token_size, token_size=token_size, encoder_lr_mult=0.1,
                    clip_align_layer_id=2, use_checkpoint=False, vit_dec_patch_size=16),
      discriminator=dict(dino_ckpt_path="assets/models/dino_vit_small_patch8_224.pth", norm_type="bn"),
      siglip2=dict(SIGLIP2_SO400M),
      vit_decoder=dict(VIT_DECODER_L),
  )
  cfg.losses = dict(discriminator_start=100000, discriminator_factor=1.0, discriminator_weight=0.05,
                    perceptual_loss="lpips-convnext_s-1.0-0.1", perceptual_weight=1.1, reconstruction_weight_l1=0.1,
                    reconstruction_weight_l2=1.0, clip_loss_weight=0.7, gram_loss_weight=10.0)
  # Port only: the loss networks' files (the reference takes them from torchvision's cache and assets/) and
  # the DINO discriminator's size (hard-coded ViT-S/8 and readouts in DinoDisc); see train/bar_fsq_task.py.
  cfg.loss_networks = dict(lpips_checkpoint="", vgg16_checkpoint="", convnext_checkpoint="",
                           dino=dict(width=384, num_heads=6, depth=12, key_depths=(2, 5, 8, 11)))
  cfg.dataset = dict(
      params=dict(train_shards_path_or_url="/path/to/imagenet-train-{000000..000320}.tar",
                  eval_shards_path_or_url="/path/to/imagenet-val-{000000..000049}.tar", num_workers_per_gpu=16),
      preprocessing=dict(resize_shorter_edge=crop_size, crop_size=crop_size, random_crop=True, random_flip=True))
  cfg.optimizer = dict(name="adamw", params=dict(learning_rate=1e-4, discriminator_learning_rate=1e-4, beta1=0.9,
                                                 beta2=0.999, weight_decay=0.0))
  cfg.lr_scheduler = dict(scheduler="cosine", params=dict(learning_rate=1e-4, warmup_steps=10000, end_lr=1e-5))
  cfg.training = dict(compile_model=True, gradient_accumulation_steps=1, per_gpu_batch_size=32,
                      mixed_precision="bf16", enable_tf32=True, use_ema=True, seed=42, max_train_steps=200000,
                      num_generated_images=2, max_grad_norm=1.0, enable_wandb=True)
  cfg.runtime = dict(dtype="float32", precision="default")
  _add_training_run(cfg)
  return cfg


def _add_training_run(cfg) -> None:
  """This port's run keys (data source, in-training evaluation, mesh, checkpoints kept), as the other stages."""
  from maskbit_jax import config_defaults as d

  run = d.training_run(save_every=cfg.experiment.save_every, log_every=cfg.experiment.log_every,
                       generate_every=cfg.experiment.generate_every, eval_every=cfg.experiment.eval_every)
  cfg.experiment.update(run["cadence"])
  cfg.dataset.update(run["data"])
  cfg.training.global_batch_size = 0  # > 0: fixed global batch instead of per_gpu_batch_size x devices
  cfg.runtime.update(mesh=dict(data=-1, fsdp=1, tensor=1), dcn_mesh=dict(data=1, fsdp=1, tensor=1), num_devices=0,
                     keep_checkpoints=3)
  cfg.evaluation = d.evaluation()
