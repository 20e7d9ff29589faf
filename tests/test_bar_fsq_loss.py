"""Parity of BAR-FSQ tokenizer training's losses, discriminator, optimizer steps and EMA with the release's code.

The numbers come from running the BAR release's own ``ReconstructionLoss``, ``DinoDisc``,
``EMAModel`` and lr schedule on tiny seeded networks (``tests/data/bar_fsq/README.md``); every
configuration is read from the files, so another set (``MASKBIT_BAR_FSQ_DATA``) runs unchanged.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, nhwc, require_folder

from maskbit_jax.convert import dino_mapping
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.losses import bar_fsq_loss, bar_perceptual, gram, perceptual
from maskbit_jax.models import convnext as convnext_lib
from maskbit_jax.models import dino_discriminator as dd
from maskbit_jax.train import bar_optim, optim

# float32 on both sides; the differences are summation order (and the 224 resizes' matmuls).
RTOL, ATOL = 2e-4, 2e-5


@pytest.fixture(scope="module")
def data() -> pathlib.Path:
  path = pathlib.Path(os.environ.get("MASKBIT_BAR_FSQ_DATA", REPO / "tests" / "data" / "bar_fsq")).resolve()
  return require_folder(path, "config.json", "BAR-FSQ loss fixtures", "MASKBIT_BAR_FSQ_DATA")


@pytest.fixture(scope="module")
def cfg(data) -> dict:
  return json.loads((data / "config.json").read_text())


@pytest.fixture(scope="module")
def disc(data, cfg):
  c, h = cfg["dino"], cfg["heads"]
  module = dd.DinoDiscriminator(width=c["embed_dim"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"],
                                depth=c["depth"], key_depths=tuple(c["key_depths"]), patch_size=c["patch_size"],
                                kernel_size=h["kernel_size"], norm_eps=h["norm_eps"])
  backbone = dino_mapping.load_dino_backbone(data / "dino_backbone.npz", module)
  heads, spectral = dino_mapping.heads_from_torch(read_state_dict(data / "disc_heads_init.npz"), len(c["key_depths"]) + 1)
  return module, backbone, heads, spectral


def _disc_fn(module, backbone):
  def fn(head_params, spectral, images):
    logits, new = module.apply({"params": {"backbone": backbone, **head_params}, dd.SPECTRAL: spectral}, images,
                               mutable=[dd.SPECTRAL])
    return logits, new[dd.SPECTRAL]
  return fn


def _close(got, want, what, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=rtol, atol=atol,
                             err_msg=what)


def _prefixed(npz, prefix):
  return {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}


def _check_heads(got_params, got_spectral, torch_state, num_heads, what):
  want_params, want_spectral = dino_mapping.heads_from_torch(torch_state, num_heads)
  jax.tree.map(lambda a, b: _close(a, b, what), got_params, want_params)
  jax.tree.map(lambda a, b: _close(a, b, what + " (spectral u/v)", rtol=1e-4, atol=1e-6), got_spectral,
               want_spectral)


def _advance_schedule(state, steps):
  """The fixtures step the schedule ``steps`` times before the one optimizer step (Adam's count stays 1)."""
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)
  return jax.tree.map(lambda s: s._replace(count=jnp.asarray(steps, s.count.dtype)) if is_sched(s) else s, state,
                      is_leaf=is_sched)


@pytest.mark.slow  # tens of seconds on 2 CPU cores (the tiny nets still run at 224 px)
def test_discriminator_outputs(data, disc):
  module, backbone, heads, spectral = disc
  d = np.load(data / "discriminator.npz")
  fn = jax.jit(_disc_fn(module, backbone))
  logits, after = fn(heads, spectral, nhwc(d["real"]))  # 32 px: bicubic up-sampling, 10 images = 2 virtual batches
  _close(logits, d["logits_real_bicubic"], "logits (bicubic)")
  _check_heads(heads, after, _prefixed(d, "state_after_one_forward/"), len(heads), "one forward")
  _close(fn(heads, spectral, nhwc(d["big"]))[0], d["logits_big_area"], "logits (area)")
  offsets = tuple(int(t) for t in d["crop_offsets"])
  crop = module.apply({"params": {"backbone": backbone, **heads}, dd.SPECTRAL: spectral}, nhwc(d["big"]),
                      crop_offsets=offsets, mutable=[dd.SPECTRAL])[0]
  _close(crop, d["logits_big_crop"], "logits (crop)")


@pytest.mark.slow  # tens of seconds on 2 CPU cores (the tiny nets still run at 224 px)
def test_discriminator_step(data, cfg, disc):
  module, backbone, heads, spectral = disc
  d = np.load(data / "discriminator.npz")
  settings = bar_fsq_loss.BarFsqLossSettings.from_config(cfg["losses"])
  fn = _disc_fn(module, backbone)
  start = settings.discriminator_start
  inputs, recons = nhwc(d["d_inputs"]), nhwc(d["d_recon"])

  def loss(head_params, step):
    value, terms, new = bar_fsq_loss.discriminator_loss(settings, inputs, recons, step, disc_fn=fn,
                                                        disc_params=head_params, disc_spectral=spectral)
    return value, (terms, new)

  (value, (terms, new)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(heads, start)
  _close(value, d["d_loss"], "discriminator loss")
  _close(terms["logits_real"], d["d_logits_real_mean"], "mean real logit")
  _close(terms["logits_fake"], d["d_logits_fake_mean"], "mean fake logit")
  state_after = _prefixed(d, "state_after_d_step_forward/")
  grad_state = {**state_after, **_prefixed(d, "d_grad/")}
  _check_heads(grads, new, grad_state, len(heads), "discriminator gradients")
  assert float(d["d_loss_before_start"]) == 0.0 == float(bar_fsq_loss.discriminator_factor(settings, start - 1))

  o = cfg["optimizer"]
  d_total = o["max_train_steps"] - start
  tx = bar_optim.make_bar_optimizer(learning_rate=o["learning_rate"], warmup_steps=o["warmup_steps"],
                                    total_steps=d_total, end_lr=o["end_lr"], beta1=o["beta1"], beta2=o["beta2"],
                                    weight_decay=o["weight_decay"], max_grad_norm=o["max_grad_norm"])
  _close(bar_optim.bar_lr_schedule(o["learning_rate"], o["warmup_steps"], d_total, o["end_lr"])(o["schedule_step"]),
         d["d_lr"], "discriminator lr", rtol=1e-6)
  _close(optax.tree.norm(grads), d["d_grad_norm"], "discriminator grad norm")
  state = _advance_schedule(tx.init(heads), o["schedule_step"])
  updates, _ = tx.update(grads, state, heads)
  want, _ = dino_mapping.heads_from_torch({**state_after, **_prefixed(d, "d_param_after_step/")}, len(heads))
  want_grads, _ = dino_mapping.heads_from_torch(grad_state, len(heads))
  checked = jax.tree.leaves(jax.tree.map(
      lambda u, p0, p1, gr, g: _check_adam_update(u, np.asarray(p1) - np.asarray(p0), gr, g, o["learning_rate"]),
      updates, heads, want, want_grads, grads))
  assert sum(checked) > 0.5 * optax.tree.size(grads), f"only {sum(checked)} weights' updates were compared"


def _check_adam_update(got, want, grad_ref, grad_ours, lr_bound):
  """One Adam step moves each weight by ``lr * g / (|g| + eps)``: about ``lr * sign(g)``. Where the reference
  gradient is at the level of float noise (the conv biases in front of a BatchNormLocal, whose true gradient
  is 0), or where the two gradients differ by a tenth of their size, that sign is noise too, so there only
  ``|update| <= lr`` is checked (the gradients themselves are compared above at the fixtures' tolerance)."""
  got, want, grad_ref, grad_ours = (np.asarray(a, np.float32) for a in (got, want, grad_ref, grad_ours))
  signal = (np.abs(grad_ref) > 1e-6) & (np.abs(grad_ours - grad_ref) < 0.1 * np.abs(grad_ref))
  np.testing.assert_allclose(got[signal], want[signal], rtol=1e-3, atol=1e-7)
  assert np.all(np.abs(got[~signal]) <= lr_bound * 1.0001)
  return int(signal.sum())


def _lpips_variables(cfg, tmp_path):
  rng = np.random.default_rng(cfg["lpips_seed"])
  state = {}
  for key in cfg["lpips_key_order"]:
    shape = tuple(cfg["lpips_shapes"][key])
    if key.startswith("lin"):
      state[key] = np.abs(rng.standard_normal(shape, np.float32)) * np.float32(0.1)
    elif key.endswith("weight"):
      state[key] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / int(np.prod(shape[1:]))))
    else:
      state[key] = rng.standard_normal(shape, np.float32) * np.float32(0.01)
  path = tmp_path / "lpips_seeded.npz"
  np.savez(path, **state)
  return perceptual.load_lpips_params(path)


def _tiny_autoencoder(params, images):
  """The fixtures' stand-in tokenizer: an 'encoder' and a 'decoder' parameter group, a clip head."""
  h = jnp.einsum("oc,bhwc->bhwo", params["encoder.mix"], images)
  recon = h @ params["decoder.mix.weight"].T + params["decoder.mix.bias"]
  b, hh, ww, c = h.shape
  cells = h.reshape(b, hh // 8, 8, ww // 8, 8, c).mean((2, 4)).reshape(b, -1, c)
  return recon, cells @ params["decoder.clip_proj.weight"].T + params["decoder.clip_proj.bias"]


@pytest.mark.slow  # tens of seconds on 2 CPU cores (the tiny nets still run at 224 px)
def test_generator_loss_terms_and_step(data, cfg, disc, tmp_path):
  module, backbone, heads, spectral = disc
  g = np.load(data / "generator_loss.npz")
  settings = bar_fsq_loss.BarFsqLossSettings.from_config(cfg["losses"])
  lpips_vars = _lpips_variables(cfg, tmp_path)
  cx = cfg["convnext"]
  convnext_model = convnext_lib.ConvNeXt(convnext_lib.stages_from_block_setting(cx["block_setting"]),
                                         num_classes=cx["num_classes"])
  convnext_vars = bar_perceptual.load_convnext_params(data / "convnext_tiny.npz", model=convnext_model)
  gram_model = gram.VGGLayerOutputs(tuple(cfg["gram_vgg_cfg"]))
  gram_vars = gram.load_gram_vgg_params(data / "gram_vgg_tiny.npz", model=gram_model)
  perceptual_fn = lambda x, r: bar_perceptual.bar_perceptual_loss(
      settings.perceptual, x, r, lpips_variables=lpips_vars, convnext_variables=convnext_vars,
      convnext_model=convnext_model)
  gram_fn = lambda x, r: gram.gram_loss(gram_vars, x, r, model=gram_model)
  images, clip_gt = nhwc(g["images"]), g["clip_gt"]

  # The unweighted pieces on the reference's reconstructions.
  recon_ref = nhwc(g["after_start/reconstructions"])
  _close(bar_perceptual.lpips_pm1(lpips_vars, images, recon_ref), g["pieces/lpips"].reshape(-1), "LPIPS")
  resized = bar_perceptual.torch_resize.resize(images, 224, "bicubic_aa")
  _close(resized[:, ::7, ::7], nhwc(g["pieces/convnext_resized_every7"]), "antialiased bicubic resize")
  _close(convnext_model.apply(convnext_vars, bar_perceptual.convnext_preprocess(images)), g["pieces/convnext_logits"],
         "ConvNeXt logits")
  _close(perceptual_fn(images, recon_ref), np.mean(g["pieces/perceptual"]), "perceptual (batch mean)")
  _close(gram_fn(images, recon_ref), g["pieces/gram"], "gram", rtol=1e-3, atol=1e-9)

  params = {k: jnp.asarray(v) for k, v in read_state_dict(data / "tiny_autoencoder_init.npz").items()}
  fn = _disc_fn(module, backbone)

  def loss(p, step):
    recon, clip_pred = _tiny_autoencoder(p, images)
    total, terms, new = bar_fsq_loss.generator_loss(settings, images, recon, step, perceptual_fn=perceptual_fn,
                                                    gram_fn=gram_fn, clip_pred=clip_pred, clip_gt=clip_gt,
                                                    disc_fn=fn, disc_params=heads, disc_spectral=spectral)
    return total, (terms, new, recon)

  loss_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  for case in ("before_start", "after_start"):
    (_, (terms, new, recon)), grads = loss_and_grad(params, int(g[f"{case}/global_step"]))
    _close(recon, nhwc(g[f"{case}/reconstructions"]), f"{case}: reconstructions")
    for name, value in terms.items():
      tol = dict(rtol=1e-3, atol=1e-8) if name == "gram_loss" else {}
      _close(value, g[f"{case}/{name}"], f"{case}: {name}", **tol)
    for name, value in grads.items():
      _close(value, g[f"{case}/grad/{name}"], f"{case}: gradient of {name}", rtol=1e-3, atol=1e-6)
    _check_heads(heads, new, _prefixed(g, f"{case}/disc_state_after/"), len(heads), f"{case}: spectral state")

  o = cfg["optimizer"]
  tx = bar_optim.make_bar_optimizer(learning_rate=o["learning_rate"], warmup_steps=o["warmup_steps"],
                                    total_steps=o["max_train_steps"], end_lr=o["end_lr"], beta1=o["beta1"],
                                    beta2=o["beta2"], weight_decay=o["weight_decay"], max_grad_norm=o["max_grad_norm"],
                                    encoder_lr_mult=o["encoder_lr_mult"])
  lr = bar_optim.bar_lr_schedule(o["learning_rate"], o["warmup_steps"], o["max_train_steps"], o["end_lr"])
  _close([lr(o["schedule_step"]) * o["encoder_lr_mult"], lr(o["schedule_step"])], g["g_lr"], "generator lr", rtol=1e-6)
  _close(optax.tree.norm(grads), g["g_grad_norm"], "generator grad norm", rtol=1e-3)
  updates, _ = tx.update(grads, _advance_schedule(tx.init(params), o["schedule_step"]), params)
  for name, value in optax.apply_updates(params, updates).items():
    _close(value, g[f"param_after_step/{name}"], f"{name} after one AdamW step", rtol=1e-5, atol=1e-6)


def test_ema_matches_reference(data, cfg):
  e = np.load(data / "ema.npz")
  shadow = [jnp.asarray(e["init/0"]), jnp.asarray(e["init/1"])]
  for s in range(1, cfg["ema_steps"] + 1):
    params = [jnp.asarray(e[f"step{s}/param/{i}"]) for i in range(2)]
    _close(optim.ema_decay(s, cfg["ema_decay"]), e[f"step{s}/decay"], f"EMA decay at step {s}", rtol=1e-6)
    shadow = optim.ema_update(shadow, params, s, decay=cfg["ema_decay"])
    for i in range(2):
      _close(shadow[i], e[f"step{s}/shadow/{i}"], f"EMA shadow {i} at step {s}", rtol=1e-5, atol=1e-6)


def test_quantize_8bit_and_factor():
  settings = bar_fsq_loss.BarFsqLossSettings.from_config(dict(
      discriminator_start=10, discriminator_factor=1.0, discriminator_weight=0.05, perceptual_loss="lpips",
      perceptual_weight=1.0, reconstruction_weight_l1=0.0, reconstruction_weight_l2=1.0))
  assert float(bar_fsq_loss.discriminator_factor(settings, 9)) == 0.0
  assert float(bar_fsq_loss.discriminator_factor(settings, 10)) == 1.0
  x = jnp.asarray([-1.5, -1.0, 0.0, 1 / 255, 1.2])
  np.testing.assert_array_equal(np.asarray((bar_fsq_loss.quantize_8bit(x) + 1) * 127.5).round(3),
                                [0.0, 0.0, 128.0, 128.0, 255.0])


def test_released_recipe_settings():
  from maskbit_jax.config import load_config

  s = bar_fsq_loss.BarFsqLossSettings.from_config(load_config(str(REPO / "configs" / "bar_fsq_16bits.py")).losses)
  assert (s.discriminator_start, s.discriminator_factor, s.discriminator_weight) == (100000, 1.0, 0.05)
  assert s.perceptual == bar_perceptual.PerceptualWeights(1.0, 0.1) and s.perceptual_weight == 1.1
  assert (s.reconstruction_weight_l1, s.reconstruction_weight_l2) == (0.1, 1.0)
  assert (s.clip_loss_weight, s.gram_loss_weight) == (0.7, 10.0)


@pytest.mark.parametrize("loader, hint", [
    (lambda p: dino_mapping.load_dino_backbone(p, dd.DinoDiscriminator()), "nyu-visionx/RAE-collections"),
    (lambda p: bar_perceptual.load_convnext_params(p), "convnext_small-0c510722.pth"),
    (lambda p: gram.load_gram_vgg_params(p), "vgg16-397923af.pth"),
])
def test_missing_frozen_network_is_one_line(tmp_path, loader, hint):
  with pytest.raises(FileNotFoundError) as err:
    loader(tmp_path / "absent.pth")
  message = str(err.value)
  assert "\n" not in message and hint in message and "absent.pth" in message
