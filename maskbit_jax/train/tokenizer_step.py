"""Stage I: one VQGAN+ tokenizer step (generator and discriminator updates), jitted with explicit shardings.

Per optimizer step, as ``scripts/train_tokenizer.py`` does:

1. tokenizer forward in train mode, generator loss (reconstruction,
   perceptual, quantizer + annealed entropy, and from ``discriminator_start``
   the GAN term with the discriminator frozen), gradient, clip, AdamW, EMA;
2. from ``discriminator_start`` only: the discriminator loss on the real
   images and the reconstructions of step 1 (made by the tokenizer BEFORE its
   update), LeCam against the EMA before this step, then the EMA moves;
   gradient, clip, its own AdamW. Before ``discriminator_start`` the
   discriminator's params, optimizer state (so its schedule counter) and the
   LeCam EMA do not change at all.

The two phases (before and from ``discriminator_start``) are two compiled
programs, chosen on the host from the step number (:class:`JittedTokenizerStep`):
the reference's own control flow, and much faster than a ``lax.cond`` on the
traced step under autodiff. The train state holds everything a step changes,
so each is ``(state, batch, perceptual_variables) -> (state, metrics)`` with
the state donated. The frozen perceptual network's variables are an argument (not
closed over), so XLA does not fold a 100 MB constant into the program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from maskbit_jax import sharding
from maskbit_jax.losses import gan
from maskbit_jax.losses import vqgan_loss as vl
from maskbit_jax.models.discriminator import abstract_discriminator_params
from maskbit_jax.models.tokenizer import abstract_tokenizer_params, with_entropy_groups
from maskbit_jax.train import microbatch
from maskbit_jax.train.optim import CLIP_EPS, ema_update

# The metric holding per-parameter gradient norms (a dict); the loop writes it every
# ``experiment.log_grad_norm_every`` steps instead of averaging it with the scalars.
GRAD_NORMS = "grad_norms"


def parameter_grad_norms(grads: Any, max_grad_norm: float | None, prefix: str = "") -> dict:
  """The reference's ``log_grad_norm``: ``{"grad_norm/<prefix><path>": ||g||_2 / g.size}`` for every parameter,
  of the gradient the optimizer applies, i.e. after ``clip_grad_norm_(max_grad_norm)`` (None: no clipping),
  as the reference reads ``param.grad`` after clipping. float32 scalars; the paths join flax's names with "/"."""
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  sq = [jnp.sum(jnp.square(g.astype(jnp.float32))) for _, g in flat]
  scale = jnp.float32(1.0)
  if max_grad_norm is not None and sq:
    scale = jnp.minimum(jnp.float32(max_grad_norm) / (jnp.sqrt(sum(sq)) + CLIP_EPS), 1.0)
  name = lambda path: "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return {f"grad_norm/{prefix}{name(path)}": jnp.sqrt(s) * scale / max(g.size, 1) for (path, g), s in zip(flat, sq)}


@flax.struct.dataclass
class TokenizerTrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  disc_params: Any
  disc_opt_state: Any
  lecam: gan.LeCamEMA
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class TokenizerStep:
  """The static parts of a stage-I step: modules, optimizers, loss config."""

  model: nn.Module
  disc: nn.Module
  tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation
  loss_cfg: vl.VQGANLossConfig
  perceptual_fn: Any = None  # fn(variables, inputs, reconstructions); None when perceptual_weight is 0
  use_ema: bool = True
  accumulation: int = 1
  max_grad_norm: float | None = None  # training.max_grad_norm (the clip inside tx/disc_tx), for GRAD_NORMS
  entropy_group_size: int | None = None  # images per quantizer-entropy group (entropy_group_size); None: whole batch


def entropy_group_size(loss_cfg: vl.VQGANLossConfig, per_gpu_batch_size: int) -> int | None:
  """Images per group of the quantizer's entropy terms.

  ``losses.entropy_over="device"`` (default): the reference's per-GPU batch
  (``training.per_gpu_batch_size``, 16 in the recipes): each GPU took the
  entropy of its own images, and DDP averaged the losses. The groups are the
  same on any topology (1 device or a pod), and are each device's images when
  the global batch is ``per_gpu_batch_size`` x devices. ``"batch"``: None, the
  whole (micro-)batch at once.
  """
  return int(per_gpu_batch_size) if loss_cfg.entropy_over == "device" else None


def entropy_groups(micro_batch: int, group_size: int | None) -> int:
  """How many entropy groups a micro-batch of ``micro_batch`` images holds (1 when it is at most one group)."""
  if group_size is None or micro_batch <= group_size:
    return 1
  if micro_batch % group_size:
    raise ValueError(f"a micro-batch of {micro_batch} images does not split into entropy groups of {group_size} "
                     "(training.per_gpu_batch_size); choose a multiple, or losses.entropy_over='batch'")
  return micro_batch // group_size


def init_state(spec: TokenizerStep, params: Any, disc_params: Any, rng: jax.Array) -> TokenizerTrainState:
  # copies: the jitted step donates the state, which must not free the caller's arrays
  params = jax.tree.map(jnp.copy, params)
  disc_params = jax.tree.map(jnp.copy, disc_params)
  return TokenizerTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=spec.tx.init(params),
                             ema_params=jax.tree.map(jnp.copy, params), disc_params=disc_params,
                             disc_opt_state=spec.disc_tx.init(disc_params), lecam=gan.init_lecam_ema(), rng=rng)


def _zero_perceptual(inputs, reconstructions):
  del inputs, reconstructions
  return jnp.zeros((), jnp.float32)


def train_step(state: TokenizerTrainState, batch: dict, perceptual_vars: Any, *, spec: TokenizerStep,
               discriminator_on: bool) -> tuple[TokenizerTrainState, dict]:
  """``batch["image"]``: float32 ``[B, H, W, 3]`` in [0, 1] (NHWC).

  ``discriminator_on``: whether ``state.step >= losses.discriminator_start``
  (static; the caller compiles one program per phase).
  """
  cfg, k = spec.loss_cfg, spec.accumulation
  step = state.step
  disc_apply = lambda p, x: spec.disc.apply({"params": p}, x)
  perceptual = (functools.partial(spec.perceptual_fn, perceptual_vars) if spec.perceptual_fn is not None
                else _zero_perceptual)
  micro_images = microbatch.split(batch["image"], k)
  model = with_entropy_groups(spec.model, entropy_groups(batch["image"].shape[0] // k, spec.entropy_group_size))

  def generator_micro(images):
    def loss_fn(params):
      forward = lambda p: model.apply({"params": p}, images, train=True)
      recon, quantizer_results, last_layer_vjp = vl.with_last_layer_vjp(forward, params)
      total, terms = vl.generator_loss(cfg, inputs=images, reconstructions=recon,
                                       quantizer_results=quantizer_results, step=step, disc_apply=disc_apply,
                                       disc_params=state.disc_params, perceptual_fn=perceptual,
                                       last_layer_vjp=last_layer_vjp, gan_active=discriminator_on)
      return total, (terms, recon)

    (_, (terms, recon)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return (grads, terms), jax.lax.stop_gradient(recon)

  (grads, g_terms), micro_recon = microbatch.mean_over_micro(generator_micro, micro_images, k)
  updates, opt_state = spec.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # the reference EMA counts optimizer steps from 1
  ema = ema_update(state.ema_params, params, step + 1) if spec.use_ema else state.ema_params

  def train_discriminator(operand):
    d_params, d_opt_state, lecam = operand

    def micro(lecam, xs):
      images, recon = xs

      def loss_fn(dp):
        total, terms, new_lecam = vl.discriminator_loss(cfg, inputs=images, reconstructions=recon, step=step,
                                                        disc_apply=disc_apply, disc_params=dp, lecam_ema=lecam)
        return total, (terms, new_lecam)

      (_, (terms, new_lecam)), d_grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
      return new_lecam, (d_grads, terms)

    # LeCam's EMA moves once per micro-batch, as the reference's loss module does per forward.
    if k == 1:
      lecam, (d_grads, d_terms) = micro(lecam, (micro_images[0], micro_recon[0]))
    else:
      lecam, (d_grads, d_terms) = jax.lax.scan(micro, lecam, (micro_images, micro_recon))
      d_grads, d_terms = jax.tree.map(lambda x: jnp.mean(x, axis=0), (d_grads, d_terms))
    d_updates, d_opt_state = spec.disc_tx.update(d_grads, d_opt_state, d_params)
    d_terms = dict(d_terms, discriminator_grad_norm=optax.tree.norm(d_grads))
    d_norms = parameter_grad_norms(d_grads, spec.max_grad_norm, prefix="discriminator/")
    return optax.apply_updates(d_params, d_updates), d_opt_state, lecam, d_terms, d_norms

  operand = (state.disc_params, state.disc_opt_state, state.lecam)
  grad_norms = parameter_grad_norms(grads, spec.max_grad_norm)
  if discriminator_on:
    disc_params, disc_opt_state, lecam, d_terms, d_norms = train_discriminator(operand)
    grad_norms.update(d_norms)  # the reference logs the discriminator's only on the steps it trains
  else:  # nothing of the discriminator moves, its optimizer count included
    disc_params, disc_opt_state, lecam = operand
    d_terms = {name: jnp.zeros((), jnp.float32) for name in vl.DISCRIMINATOR_TERMS + ("discriminator_grad_norm",)}

  metrics = dict(g_terms, **d_terms, grad_norm=optax.tree.norm(grads),
                 lecam_ema_real=lecam.real_logits_mean, lecam_ema_fake=lecam.fake_logits_mean)
  metrics[GRAD_NORMS] = grad_norms
  new_state = TokenizerTrainState(step=step + 1, params=params, opt_state=opt_state, ema_params=ema,
                                  disc_params=disc_params, disc_opt_state=disc_opt_state, lecam=lecam,
                                  rng=state.rng)
  return new_state, metrics


def state_shardings(spec: TokenizerStep, mesh, image_size: int = 64) -> TokenizerTrainState:
  """NamedShardings of the whole train state from the one rules table (optimizer moments follow their params)."""
  boxed = abstract_tokenizer_params(spec.model, image_size)
  d_boxed = abstract_discriminator_params(spec.disc, image_size)
  param_sh = sharding.logical_to_sharding(boxed, mesh)
  d_param_sh = sharding.logical_to_sharding(d_boxed, mesh)
  abstract, d_abstract = nn.meta.unbox(boxed), nn.meta.unbox(d_boxed)
  rep = sharding.replicated(mesh)
  return TokenizerTrainState(
      step=rep, params=param_sh,
      opt_state=sharding.optimizer_state_sharding(jax.eval_shape(spec.tx.init, abstract), abstract, param_sh, mesh),
      ema_params=param_sh, disc_params=d_param_sh,
      disc_opt_state=sharding.optimizer_state_sharding(jax.eval_shape(spec.disc_tx.init, d_abstract), d_abstract,
                                                       d_param_sh, mesh),
      lecam=gan.LeCamEMA(real_logits_mean=rep, fake_logits_mean=rep), rng=rep)


class JittedTokenizerStep:
  """The stage-I step for both phases, each jitted with explicit shardings and the state donated.

  ``step(state, batch, perceptual_vars, step_number)``: ``step_number`` is the
  host-side value of ``state.step`` (the loop knows it without a device sync).
  """

  def __init__(self, spec: TokenizerStep, mesh, perceptual_vars: Any = None):
    self.spec = spec
    self.state_shardings = state_shardings(spec, mesh)
    self.batch_shardings = {"image": sharding.batch_sharding(mesh, 4), "label": sharding.batch_sharding(mesh, 1)}
    self.perceptual_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), perceptual_vars)
    self._fns = {}
    for on in (False, True):
      self._fns[on] = jax.jit(functools.partial(train_step, spec=spec, discriminator_on=on),
                              in_shardings=(self.state_shardings, self.batch_shardings, self.perceptual_shardings),
                              out_shardings=(self.state_shardings, None), donate_argnums=0)

  def phase(self, step_number: int) -> bool:
    return bool(vl.should_train_discriminator(self.spec.loss_cfg, int(step_number)))

  def __call__(self, state: TokenizerTrainState, batch: dict, perceptual_vars: Any, step_number: int):
    return self._fns[self.phase(step_number)](state, batch, perceptual_vars)

  def lower(self, state, batch, perceptual_vars, step_number: int):
    return self._fns[self.phase(step_number)].lower(state, batch, perceptual_vars)
