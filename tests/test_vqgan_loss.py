"""The stage-I tokenizer loss (reference ``VQGANLoss``) against ``losses.npz``.

Every variant ``loss_<v>`` of ``fixture_configs.json``, every stored step and
term is discovered from the key names (``gen_<v>_step<s>_<term>``,
``disc_<v>_call<c>_<term>``). The nets are the fixture ones: ``discriminator_tiny``,
the recipe ResNet50, recipe VGG16 + stored LPIPS heads, and for the adaptive
weight ``tokenizer_tiny`` (README section 6: ``reconstructions`` is its
train-mode output for ``inputs``), whose decoder supplies the pull-back to
its last conv kernel. The loss terms are fed the stored ``reconstructions``
and ``extra_*`` quantizer terms, as the reference was.
Tolerances (README section 8): rtol = atol = 1e-5 for losses, 1e-4 for images.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from conftest import golden_path, load_npz, nhwc
from maskbit_jax.convert.discriminator_mapping import discriminator_param_mapping
from maskbit_jax.convert.lpips_mapping import lpips_param_mapping
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.convert.resnet50_mapping import resnet50_param_mapping
from maskbit_jax.convert.tokenizer_mapping import tokenizer_param_mapping
from maskbit_jax.losses import gan
from maskbit_jax.losses import vqgan_loss as vl
from maskbit_jax.models import resnet50 as resnet50_lib
from maskbit_jax.models import vgg_lpips
from maskbit_jax.models.discriminator import abstract_discriminator_params, build_discriminator
from maskbit_jax.models.tokenizer import abstract_tokenizer_params, build_tokenizer_module
from recipe_weights import recipe_state_dict

LOSS_TOL = dict(rtol=1e-5, atol=1e-5)
IMAGE_TOL = dict(rtol=1e-4, atol=1e-4)
HIGHEST = jax.lax.Precision.HIGHEST
DISC_NAME = "discriminator_tiny"
TOKENIZER_NAME = "tokenizer_tiny"
GEN_KEY = re.compile(r"gen_(?P<v>.+?)_step(?P<s>\d+)_(?P<t>.+)")
DISC_KEY = re.compile(r"disc_(?P<v>.+?)_call(?P<c>\d+)_(?P<t>.+)")
EMA_PREFIX = "after_ema_"


def _loss_keys() -> list[str]:
  path = golden_path() / "losses.npz"
  if not path.is_file():
    return []
  with np.load(path) as data:
    return list(data.files)


def _variants(pattern: re.Pattern) -> list[str]:
  names = sorted({m["v"] for k in _loss_keys() if (m := pattern.fullmatch(k))})
  return names or ["<no fixtures>"]


def _gen_table(io, v) -> dict[int, dict[str, np.ndarray]]:
  """{step: {term: value}} of one variant."""
  table: dict[int, dict[str, np.ndarray]] = {}
  for key, value in io.items():
    if (m := GEN_KEY.fullmatch(key)) and m["v"] == v:
      table.setdefault(int(m["s"]), {})[m["t"]] = value
  return dict(sorted(table.items()))


def _disc_table(io, v) -> dict[int, dict[str, np.ndarray]]:
  table: dict[int, dict[str, np.ndarray]] = {}
  for key, value in io.items():
    if (m := DISC_KEY.fullmatch(key)) and m["v"] == v:
      table.setdefault(int(m["c"]), {})[m["t"]] = value
  return dict(sorted(table.items()))


# ----------------------------------------------------------------------------- fixtures (one build per module)


@pytest.fixture(scope="module")
def io(golden):
  return load_npz(golden / "losses.npz")


@pytest.fixture(scope="module")
def quantizer_results(io):
  results = {k[len("extra_"):]: jnp.asarray(v) for k, v in io.items() if k.startswith("extra_")}
  assert "quantizer_loss" in results, "losses.npz stores no extra_* quantizer terms"
  return results


@pytest.fixture(scope="module")
def images(io):
  return jnp.asarray(nhwc(io["inputs"])), jnp.asarray(nhwc(io["reconstructions"]))


@pytest.fixture(scope="module")
def loss_cfgs(fixture_configs):
  return {name[len("loss_"):]: cfg for name, cfg in fixture_configs["configs"].items() if name.startswith("loss_")}


@pytest.fixture(scope="module")
def discriminator(golden, fixture_configs):
  cfg = fixture_configs["configs"][DISC_NAME]
  module = build_discriminator(cfg, precision=HIGHEST)
  abstract = nn.meta.unbox(abstract_discriminator_params(build_discriminator(cfg)))
  params = torch_state_to_flax(load_npz(golden / f"{DISC_NAME}_state.npz"), abstract, discriminator_param_mapping(cfg))
  apply = jax.jit(lambda p, x: module.apply({"params": p}, x))
  return apply, jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def perceptual_fns(golden):
  """(perceptual_loss, on_logits) -> jitted ``fn(inputs, recons)``; nets are loaded on first use."""
  cache: dict = {}

  def variables(name):
    if name not in cache:
      if name == "resnet50":
        state = recipe_state_dict(golden / "recipe_manifests" / "resnet50.json")
        abstract = resnet50_lib.abstract_resnet50_variables(resnet50_lib.ResNet50())
        cache[name] = jax.tree.map(jnp.asarray, torch_state_to_flax(state, abstract,
                                                                     resnet50_param_mapping()))
      else:
        state = recipe_state_dict(golden / "recipe_manifests" / "vgg16.json")
        heads = load_npz(golden / "perceptual_recipe_io.npz")
        state.update((k[len("lpips_"):], v) for k, v in heads.items() if k.startswith("lpips_lin"))
        abstract = vgg_lpips.abstract_lpips_variables()
        params = torch_state_to_flax(state, abstract["params"], lpips_param_mapping())
        cache[name] = {"params": jax.tree.map(jnp.asarray, params)}
    return cache[name]

  def get(cfg: vl.VQGANLossConfig):
    key = (cfg.perceptual_loss, cfg.perceptual_loss_on_logits if cfg.perceptual_loss == "resnet50" else None)
    if key not in cache:
      # A pytree Partial: the weights stay jit arguments (never constants folded into a program).
      cache[key] = jax.tree_util.Partial(jax.jit(vl.perceptual_loss_fn(cfg, precision=HIGHEST)),
                                         variables(cfg.perceptual_loss))
    return cache[key]

  return get


@pytest.fixture(scope="module")
def tokenizer_forward(golden, fixture_configs, io):
  """Train-mode tokenizer_tiny on ``inputs``: (reconstructions, quantizer results, last_layer_vjp)."""
  cfg = fixture_configs["configs"][TOKENIZER_NAME]
  module = build_tokenizer_module(cfg, precision=HIGHEST)
  abstract = nn.meta.unbox(abstract_tokenizer_params(module))
  params = jax.tree.map(jnp.asarray, torch_state_to_flax(load_npz(golden / f"{TOKENIZER_NAME}_state.npz"), abstract,
                                                         tokenizer_param_mapping(cfg)))

  @jax.jit
  def forward(params, x):
    return vl.with_last_layer_vjp(lambda p: module.apply({"params": p}, x, train=True), params)

  return forward(params, jnp.asarray(nhwc(io["inputs"])))


def _generator_loss(cfg, step, images, quantizer_results, discriminator, perceptual_fns, tokenizer_forward):
  disc_apply, disc_params = discriminator
  inputs, recons = images
  return vl.generator_loss(
      cfg, inputs=inputs, reconstructions=recons, quantizer_results=quantizer_results, step=step,
      disc_apply=disc_apply, disc_params=disc_params, perceptual_fn=perceptual_fns(cfg),
      last_layer_vjp=tokenizer_forward[2] if cfg.adaptive_weight else None)


def _assert_terms(got: dict, want: dict, where: str):
  assert sorted(got) == sorted(want), f"{where}: terms {sorted(got)} vs stored {sorted(want)}"
  for term, value in want.items():
    assert np.shape(got[term]) == () and got[term].dtype == jnp.float32, f"{where}_{term}"
    np.testing.assert_allclose(float(got[term]), float(value), err_msg=f"{where}_{term}", **LOSS_TOL)


# ----------------------------------------------------------------------------- generator / discriminator parity


@pytest.mark.parametrize("v", _variants(GEN_KEY))
def test_generator_terms_every_step(v, io, loss_cfgs, images, quantizer_results, discriminator, perceptual_fns,
                                    request):
  table = _gen_table(io, v)
  assert table, f"losses.npz stores no gen_{v}_* keys"
  cfg = vl.VQGANLossConfig.from_config(loss_cfgs[v])
  tok = request.getfixturevalue("tokenizer_forward") if cfg.adaptive_weight else None
  for step, want in table.items():
    total, terms = _generator_loss(cfg, step, images, quantizer_results, discriminator, perceptual_fns, tok)
    assert float(total) == float(terms["total_loss"])
    _assert_terms(terms, want, f"gen_{v}_step{step}")


@pytest.mark.parametrize("v", _variants(DISC_KEY))
def test_discriminator_calls_and_lecam_ema(v, io, loss_cfgs, images, discriminator):
  calls = _disc_table(io, v)
  assert len(calls) >= 2, f"{v}: expected at least two stored discriminator calls"
  cfg = vl.VQGANLossConfig.from_config(loss_cfgs[v])
  disc_apply, disc_params = discriminator
  inputs, recons = images
  step = cfg.discriminator_start  # README: consecutive updates once the discriminator is on
  assert vl.should_train_discriminator(cfg, step) and not vl.should_train_discriminator(cfg, step - 1)
  ema = gan.init_lecam_ema()
  for c, want in calls.items():
    total, terms, ema = vl.discriminator_loss(cfg, inputs=inputs, reconstructions=recons, step=step,
                                              disc_apply=disc_apply, disc_params=disc_params, lecam_ema=ema)
    assert float(total) == float(terms["discriminator_loss"])
    ema_want = {k[len(EMA_PREFIX):]: w for k, w in want.items() if k.startswith(EMA_PREFIX)}
    assert sorted(ema_want) == ["fake_logits_mean", "real_logits_mean"], f"disc_{v}_call{c}: {sorted(want)}"
    _assert_terms(terms, {k: w for k, w in want.items() if not k.startswith(EMA_PREFIX)}, f"disc_{v}_call{c}")
    for name, w in ema_want.items():
      # The EMA values are ~1e-4: compare them relatively.
      np.testing.assert_allclose(float(getattr(ema, name)), w.item(), rtol=1e-5, atol=1e-9,
                                 err_msg=f"disc_{v}_call{c}_{EMA_PREFIX}{name}")


def test_tokenizer_reproduces_stored_reconstructions(io, quantizer_results, tokenizer_forward):
  """The adaptive weight's last-layer pull-back comes from the same forward pass as the stored inputs."""
  recons, results, _ = tokenizer_forward
  np.testing.assert_allclose(np.asarray(recons), nhwc(io["reconstructions"]), **IMAGE_TOL)
  for key, value in quantizer_results.items():
    np.testing.assert_allclose(float(results[key]), float(value), err_msg=key, **LOSS_TOL)


def test_jitted_with_traced_step(io, loss_cfgs, images, quantizer_results, discriminator, perceptual_fns, request):
  """One compile per variant serves every step (``lax.cond`` around the discriminator), same numbers.

  Run on the adaptive variant (the cond's active branch holds both gradient
  pull-backs) where the fixture has it, otherwise on the first variant.
  """
  variants = [v for v in loss_cfgs if _gen_table(io, v)]
  v = next((v for v in variants if loss_cfgs[v]["discriminator_gradient_penalty"] == "adopt_weight"), variants[0])
  cfg = vl.VQGANLossConfig.from_config(loss_cfgs[v])
  disc_apply, disc_params = discriminator
  vjp = request.getfixturevalue("tokenizer_forward")[2] if cfg.adaptive_weight else None

  @jax.jit
  def run(step, images, quantizer_results, disc_params, perceptual_fn, vjp):
    # Everything is an argument: closed-over arrays would become constants that XLA folds at compile time.
    return vl.generator_loss(cfg, inputs=images[0], reconstructions=images[1], quantizer_results=quantizer_results,
                             step=step, disc_apply=disc_apply, disc_params=disc_params, perceptual_fn=perceptual_fn,
                             last_layer_vjp=vjp if cfg.adaptive_weight else None)

  for step, want in _gen_table(io, v).items():
    _, terms = run(jnp.int32(step), images, quantizer_results, disc_params, perceptual_fns(cfg), vjp)
    _assert_terms(terms, want, f"jit gen_{v}_step{step}")


# ----------------------------------------------------------------------------- behaviour


def test_generator_gradient_reaches_reconstructions_only(io, loss_cfgs, images, quantizer_results, discriminator):
  """The GAN term gives the reconstructions a gradient; the discriminator params get none."""
  cfg = vl.VQGANLossConfig.from_config(next(iter(loss_cfgs.values())))
  disc_apply, disc_params = discriminator
  inputs, recons = images
  perceptual_fn = lambda a, b: jnp.zeros((), jnp.float32)

  def loss(recons, disc_params, step):
    return vl.generator_loss(cfg, inputs=inputs, reconstructions=recons, quantizer_results=quantizer_results,
                             step=step, disc_apply=disc_apply, disc_params=disc_params, perceptual_fn=perceptual_fn,
                             last_layer_vjp=lambda ct: ct)[0]

  on = cfg.discriminator_start
  g_recons, g_disc = jax.grad(loss, argnums=(0, 1))(recons, disc_params, on)
  assert all(float(jnp.abs(l).max()) == 0.0 for l in jax.tree.leaves(g_disc))
  g_before = jax.grad(loss)(recons, disc_params, on - 1)
  assert float(jnp.abs(g_recons - g_before).max()) > 0.0  # the GAN term contributes once switched on


def test_adaptive_weight_formula():
  a = {"k": jnp.full((2, 2), 3.0)}  # norm 6
  b = jnp.full((4,), 1.5)  # norm 3
  np.testing.assert_allclose(float(vl.adaptive_generator_weight(a, b)), 6.0 / (3.0 + 1e-4), rtol=1e-6)
  assert float(vl.adaptive_generator_weight(a, jnp.zeros(3))) == vl.ADAPTIVE_WEIGHT_MAX
  assert float(jax.grad(lambda s: vl.adaptive_generator_weight(s * b, b))(2.0)) == 0.0


def test_entropy_annealing_schedule():
  cfg = vl.VQGANLossConfig(entropy_annealing_factor=2.0, entropy_annealing_steps=2000)
  steps = [0, 1, 1000, 1999, 2000, 2001, 30000]
  want = [max(0.0, 1 - s / 2000) * 2.0 for s in steps]
  assert [vl.entropy_annealing_weight(cfg, s) for s in steps] == want
  traced = jax.jit(lambda s: vl.entropy_annealing_weight(cfg, s))
  np.testing.assert_allclose([float(traced(jnp.int32(s))) for s in steps], want, rtol=0, atol=1e-7)
  assert vl.entropy_annealing_weight(dataclasses.replace(cfg, entropy_annealing_factor=0.0), 0) == 0.0


def test_adaptive_needs_last_layer_vjp(loss_cfgs, images, quantizer_results, discriminator):
  cfg = dataclasses.replace(vl.VQGANLossConfig.from_config(next(iter(loss_cfgs.values()))),
                            discriminator_gradient_penalty="adopt_weight")
  with pytest.raises(ValueError, match="last_layer_vjp"):
    vl.generator_loss(cfg, inputs=images[0], reconstructions=images[1], quantizer_results=quantizer_results,
                      step=0, disc_apply=discriminator[0], disc_params=discriminator[1],
                      perceptual_fn=lambda a, b: jnp.zeros(()))


def test_no_lecam_keeps_ema(images, discriminator):
  cfg = vl.VQGANLossConfig(lecam_regularization_weight=0.0)
  ema = gan.LeCamEMA(real_logits_mean=jnp.float32(0.5), fake_logits_mean=jnp.float32(-0.5))
  _, terms, new = vl.discriminator_loss(cfg, inputs=images[0], reconstructions=images[1], step=0,
                                        disc_apply=discriminator[0], disc_params=discriminator[1], lecam_ema=ema)
  assert new is ema and float(terms["lecam_loss"]) == 0.0
  assert float(terms["discriminator_loss"]) == 0.0  # before discriminator_start the factor is 0


# ----------------------------------------------------------------------------- config


def test_from_config_reads_every_fixture_variant(loss_cfgs):
  assert loss_cfgs, "fixture_configs.json has no loss_* configs"
  for v, raw in loss_cfgs.items():
    cfg = vl.VQGANLossConfig.from_config(raw)
    for key, value in raw.items():
      assert getattr(cfg, key) == value, (v, key)


@pytest.mark.parametrize("key,value", [
    ("reconstruction_loss", "l3"), ("perceptual_loss", "convnext_s"), ("discriminator_loss", "wasserstein"),
    ("discriminator_gradient_penalty", "r1"), ("perceptual_loss_on_logits", "yes"), ("discriminator_start", 1.5),
])
def test_from_config_rejects_unknown_values(loss_cfgs, key, value):
  raw = dict(next(iter(loss_cfgs.values())), **{key: value})
  with pytest.raises(ValueError, match=key):
    vl.VQGANLossConfig.from_config(raw)


def test_from_config_rejects_unknown_and_missing_keys(loss_cfgs):
  raw = dict(next(iter(loss_cfgs.values())))
  with pytest.raises(ValueError, match="perceptual_weigth"):
    vl.VQGANLossConfig.from_config(dict(raw, perceptual_weigth=0.1))
  missing = dict(raw)
  del missing["discriminator_weight"]
  with pytest.raises(ValueError, match="discriminator_weight"):
    vl.VQGANLossConfig.from_config(missing)
  optional = {k: v for k, v in raw.items() if k not in ("reconstruction_weight", "entropy_annealing_factor")}
  cfg = vl.VQGANLossConfig.from_config(ml_collections.ConfigDict(dict(optional, mlm=dict(label_smoothing=0.1))))
  assert cfg.reconstruction_weight == 1.0 and cfg.entropy_annealing_factor == 0.0 and cfg.ema_decay == 0.999
