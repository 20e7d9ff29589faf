"""BAR-FSQ tokenizer training as a task of the shared loop, stage ``bar_fsq`` (reference ``train_bar_fsq.py``).

Reads the released yaml's keys (``configs/bar_fsq_16bits.py``): ``losses.*`` (every weight and the
start step, :class:`~maskbit_jax.losses.bar_fsq_loss.BarFsqLossSettings`), ``optimizer.*`` /
``lr_scheduler.*`` (both AdamWs; the discriminator's schedule runs over ``max_train_steps -
discriminator_start`` of its own steps), ``model.vq_model.encoder_lr_mult``, ``training.*`` (EMA,
clipping, batch, seed). Port-only keys name the frozen networks' files, which the reference takes
from torchvision's cache and ``assets/``:

* ``loss_networks.lpips_checkpoint`` (the LPIPS heads, ``vgg_lpips.pth``) and
  ``loss_networks.vgg16_checkpoint`` (torchvision VGG16: the LPIPS trunk and the Gram loss's network);
* ``loss_networks.convnext_checkpoint`` (torchvision ConvNeXt-Small);
* ``model.discriminator.dino_ckpt_path`` (the DINO ViT-S/8 backbone, as in the yaml; its size, which
  DinoDisc hard-codes, in ``loss_networks.dino``);
* ``experiment.init_checkpoint``: tokenizer weights to start from (a released ``bar_fsq_*.bin`` or an
  export); otherwise
* ``experiment.siglip2_checkpoint``: the published SigLIP2 file the reference's encoder starts from
  (both stacks; quantiser and decoder start random). ``random`` starts the encoder random too (tiny
  configs, tests). A random tower's embeddings start as a fresh Hugging Face SigLIP2 model's do
  (``patch_embedding`` lecun-normal with a zero bias, ``position_embedding`` normal with std
  ``1/sqrt(width)``): the tower is frozen, and with the port's generic init (patch kernel normal(0.02),
  positions normal(1)) the frozen features carry the patch position about ten times louder than its
  content, so the bits would code positions only;
* ``experiment.fsq_bias_at_threshold`` (default False, the reference's init): start ``quantize.in_proj``'s
  bias shifted by ``-atanh(0.5 / half_l)`` (about -3.8), binary FSQ's threshold. A random encoder's
  pre-quantiser values sit near 0, where every bit is 1 and the straight-through gradient is
  ``1 - tanh^2(3.8)``, about 0.002, so a from-scratch run learns only the mean image; centred on the
  threshold each bit flips with its input and the gradient is about 1. Pretrained SigLIP2 features
  straddle the threshold by themselves, so only the tiny configs set it.

Only the files a configured term needs are read; a missing one fails before the first step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from maskbit_jax import paths, runtime
from maskbit_jax.convert import dino_mapping
from maskbit_jax.distributed import host_copy
from maskbit_jax.losses import bar_fsq_loss, bar_perceptual, gram, perceptual
from maskbit_jax.models import dino_discriminator as dd
from maskbit_jax.models.bar_fsq import SHIFT
from maskbit_jax.models.bar_tokenizer import bar_tokenizer_from_config, init_bar_tokenizer_params
from maskbit_jax.models.layers import jit_init
from maskbit_jax.train import bar_fsq_step as fs, bar_optim, observe
from maskbit_jax.train.bar_task import _with_resolution as with_resolution
from maskbit_jax.train.tasks import _Task


def _with_resolution(cfg):
  return with_resolution(cfg)


def _bias_at_threshold(params: dict) -> dict:
  """``quantize.in_proj.bias`` shifted onto binary FSQ's threshold ``z = -SHIFT`` (see the module docstring)."""
  in_proj = params["quantize"]["in_proj"]
  quantize = dict(params["quantize"], in_proj=dict(in_proj, bias=in_proj["bias"] - SHIFT))
  return dict(params, quantize=quantize)


def _fresh_siglip_embeddings(params: dict, key: jax.Array) -> dict:
  """``encoder.siglip.embeddings`` drawn as a fresh Hugging Face SigLIP2 vision model draws them (see the
  module docstring): patch kernel lecun-normal, zero bias, positions normal(1/sqrt(width))."""
  emb = params["encoder"]["siglip"]["embeddings"]
  kernel, table = emb["patch_embedding"]["kernel"], emb["position_embedding"]["embedding"]
  k_patch, k_pos = jax.random.split(key)
  emb = dict(emb, patch_embedding=dict(kernel=nn.initializers.lecun_normal()(k_patch, kernel.shape, kernel.dtype),
                                       bias=jnp.zeros_like(emb["patch_embedding"]["bias"])),
             position_embedding=dict(embedding=jax.random.normal(k_pos, table.shape, table.dtype)
                                     * table.shape[-1] ** -0.5))
  siglip = dict(params["encoder"]["siglip"], embeddings=emb)
  return dict(params, encoder=dict(params["encoder"], siglip=siglip))


class BarFsqTask(_Task):
  """Stage ``bar_fsq``: SigLIP2 encoder + binary FSQ + ViT decoder, with the DINO discriminator."""

  stage = "bar_fsq"
  log_keys = ("total_loss", "reconstruction_loss", "perceptual_loss", "clip_loss", "gram_loss", "gan_loss",
              "discriminator_loss")
  evaluation_weights = {"inception_checkpoint": "rFID and IS", "lpips_checkpoint": "LPIPS"}

  def __init__(self, cfg, mesh, workdir):
    super().__init__(_with_resolution(cfg), mesh, workdir)

    cfg = self.cfg
    dtype, precision = runtime.training(cfg)
    self.model = bar_tokenizer_from_config(cfg, dtype=dtype, precision=precision)
    self.settings = bar_fsq_loss.BarFsqLossSettings.from_config(cfg.losses)
    opt = bar_optim.bar_optimizer_settings(cfg)
    opt["gradient_accumulation_steps"] = 1  # the step accumulates over micro-batches itself
    self.tx = bar_optim.make_bar_optimizer(**opt, frozen_fn=bar_optim.bar_tokenizer_not_optimised)
    self.schedule = bar_optim.bar_schedule_from_config(cfg)
    d_opt = dict(opt, learning_rate=float(cfg.optimizer.params.get("discriminator_learning_rate",
                                                                   opt["learning_rate"])),
                 total_steps=opt["total_steps"] - self.settings.discriminator_start, encoder_lr_mult=1.0)
    self.disc_tx = bar_optim.make_bar_optimizer(**d_opt)
    self.disc = None
    if self.settings.use_discriminator and self.settings.discriminator_start < opt["total_steps"]:
      size = (cfg.get("loss_networks", None) or {}).get("dino", None) or {}
      extra = {k: (tuple(v) if k == "key_depths" else v) for k, v in size.items()}
      self.disc = dd.discriminator_from_config(cfg, dtype=dtype, precision=precision, **extra)
    self.frozen = self._frozen_networks()
    self.spec = fs.BarFsqStep(model=self.model, disc=self.disc, settings=self.settings, tx=self.tx,
                              disc_tx=self.disc_tx, perceptual_fn=self._perceptual_fn(), gram_fn=self._gram_fn(),
                              use_ema=bool(cfg.training.get("use_ema", True)),
                              accumulation=int(cfg.training.gradient_accumulation_steps))
    disc_abstract = None if self.disc is None else dd.abstract_discriminator_variables(self.disc)
    self._disc_abstract = disc_abstract
    self.step_fn = fs.JittedBarFsqStep(self.spec, mesh, self.frozen, self._heads_only(disc_abstract))
    self.state_shardings = self.step_fn.state_shardings
    self.batch_shardings = self.step_fn.batch_shardings
    self._fs = fs

  # ----------------------------------------------------------------------------- frozen networks

  def _loss_file(self, key: str, what: str) -> str:
    path = str((self.cfg.get("loss_networks", None) or {}).get(key, "") or "")
    if not path:
      raise ValueError(f"loss_networks.{key} is not set: the recipe's {what} needs its weights file (or set "
                       "the term's weight to 0)")
    return path

  def _frozen_networks(self) -> dict:
    frozen: dict = {"perceptual": {}, "gram": None, "dino": None}
    weights = self.settings.perceptual
    if self.settings.perceptual_weight > 0:
      if weights.lpips is not None:
        frozen["perceptual"]["lpips"] = perceptual.load_lpips_params(
            self._loss_file("lpips_checkpoint", "LPIPS"), self._loss_file("vgg16_checkpoint", "LPIPS trunk"))
      if weights.convnext is not None:
        frozen["perceptual"]["convnext"] = bar_perceptual.load_convnext_params(
            self._loss_file("convnext_checkpoint", "ConvNeXt-S perceptual term"))
    if self.settings.gram_loss_weight > 0:
      frozen["gram"] = gram.load_gram_vgg_params(self._loss_file("vgg16_checkpoint", "Gram loss"))
    if self.disc is not None:
      path = str(self.cfg.model.discriminator.get("dino_ckpt_path", "") or "")
      if not path:
        raise ValueError(f"model.discriminator.dino_ckpt_path is not set: {dino_mapping.DINO_FILE_HINT}")
      frozen["dino"] = dino_mapping.load_dino_backbone(path, self.disc)
    return jax.device_put(frozen)

  def _perceptual_fn(self):
    from maskbit_jax.losses import bar_perceptual

    if self.settings.perceptual_weight == 0:
      return lambda variables, x, r: jnp.zeros((), jnp.float32)
    weights = self.settings.perceptual
    return lambda variables, x, r: bar_perceptual.bar_perceptual_loss(
        weights, x, r, lpips_variables=variables.get("lpips"), convnext_variables=variables.get("convnext"))

  def _gram_fn(self):
    from maskbit_jax.losses import gram

    return (lambda variables, x, r: gram.gram_loss(variables, x, r)) if self.settings.gram_loss_weight > 0 else None

  @staticmethod
  def _heads_only(disc_abstract):
    if disc_abstract is None:
      return None
    heads = {k: v for k, v in disc_abstract["params"].items() if k != "backbone"}
    return {"params": heads, "spectral": disc_abstract["spectral"]}

  # ----------------------------------------------------------------------------- loop interface

  def init_state(self):
    init_path = str(self.cfg.experiment.get("init_checkpoint", "") or "")
    start_params = None
    if init_path:
      from maskbit_jax.convert.bar_tokenizer_mapping import load_bar_tokenizer_params
      from maskbit_jax.models.bar_tokenizer import abstract_bar_tokenizer_params

      if not paths.exists(init_path):
        raise FileNotFoundError(f"experiment.init_checkpoint={init_path!r} does not exist")
      abstract = nn.meta.unbox(abstract_bar_tokenizer_params(self.model))
      start_params = load_bar_tokenizer_params(init_path, abstract)
    siglip = str(self.cfg.experiment.get("siglip2_checkpoint", "") or "")
    encoder = None
    if start_params is None and siglip != "random":
      from maskbit_jax.convert.bar_tokenizer_mapping import SIGLIP2_FILE_HINT, siglip2_encoder_params
      from maskbit_jax.models.bar_tokenizer import abstract_bar_tokenizer_params

      if not siglip:
        raise ValueError(f"experiment.siglip2_checkpoint is not set: the encoder starts from {SIGLIP2_FILE_HINT} "
                         "(or set experiment.init_checkpoint, or 'random')")
      encoder = siglip2_encoder_params(siglip, nn.meta.unbox(abstract_bar_tokenizer_params(self.model)))

    at_threshold = bool(self.cfg.experiment.get("fsq_bias_at_threshold", False)) and start_params is None
    random_tower = start_params is None and siglip == "random"

    def make(key):
      k_tok, k_disc, k_state = jax.random.split(key, 3)
      params = nn.meta.unbox(init_bar_tokenizer_params(self.model, k_tok)) if start_params is None else start_params
      if random_tower:
        params = _fresh_siglip_embeddings(params, jax.random.fold_in(k_tok, 1))
      if at_threshold:
        params = _bias_at_threshold(params)
      if encoder is not None:
        params = dict(params, encoder=encoder)
      disc = None
      if self.disc is not None:
        variables = dd.init_discriminator_variables(self.disc, k_disc)
        disc = self._heads_only(variables)
      return self._fs.init_state(self.spec, params, disc, k_state)

    return jit_init(make, out_shardings=self.state_shardings)(jax.random.key(self.seed))

  @property
  def use_ema(self) -> bool:
    return self.spec.use_ema

  def dataset(self):
    return self.image_dataset()

  def step(self, state, batch, step_number: int):
    return self.step_fn(state, batch, self.frozen, step_number)

  def compile_steps(self, start: int) -> set[int]:
    steps = {start}
    first = self.settings.discriminator_start
    if self.disc is not None:
      steps |= {s for s in (first, first + 1) if s >= start}
      if start > first:
        steps.add(start + 1)
    return steps

  def start_note(self, start: int) -> str | None:
    if self.disc is None:
      return "no discriminator phase in this run (gan_loss and discriminator_loss stay 0)"
    return (f"from step {self.settings.discriminator_start} the steps alternate: generator with the GAN term, "
            "then discriminator (each logs its own terms; the other's read 0)")

  @functools.cached_property
  def _reconstruct(self):
    return jax.jit(lambda p, x: jnp.clip((self.model.apply({"params": p}, x * 2.0 - 1.0)[0] + 1.0) / 2.0, 0.0, 1.0))

  def visualize(self, state) -> observe.Grid:
    n = int(self.cfg.training.get("num_generated_images", 2))
    images, classes = self._eval_examples(max(n, 1))
    recon = host_copy(self._reconstruct(host_copy(self.model_params(state)), images))
    labels = [self.class_caption(c) for c in classes] + [""] * len(images)
    return observe.Grid(np.concatenate([images, recon]), labels, len(images), ("original", "reconstruction"))

  def evaluate(self, state) -> dict:
    """PSNR of the reconstructions (``model_params``) of the first ``experiment.eval_images`` eval images."""
    num = self.eval_images()
    if num <= 0:
      return {}
    images, _ = self._eval_examples(num)
    params = host_copy(self.model_params(state))
    recon = np.concatenate([np.asarray(host_copy(self._reconstruct(params, images[i:i + 32])))
                            for i in range(0, len(images), 32)])
    mse = np.mean(np.square(recon.astype(np.float64) - images.astype(np.float64)), axis=(1, 2, 3))
    return {"eval_psnr": float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))))}

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def export(self, state) -> str:
    return self.export_params(self.model_params(state), "bar_tokenizer", "bar_tokenizer")


__all__ = ["BarFsqTask"]
