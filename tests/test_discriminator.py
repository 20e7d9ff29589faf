"""The VQGAN+ discriminator and the GAN loss helpers against the PyTorch reference.

Fixtures: ``discriminator_tiny_{state,io}.npz`` / ``.bin`` and the GAN keys of
``losses.npz``; every config, case and key is read from the fixture files.
Tolerances (fixture README section 8: float64 moves the discriminator logits by
<= 3.3e-7): rtol = atol = 1e-5 for logits, feature maps and losses.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import golden_path, load_npz, nhwc
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.discriminator_mapping import discriminator_param_mapping
from maskbit_jax.convert.param_mapping import CheckpointMismatchError, flax_to_torch_state, torch_state_to_flax
from maskbit_jax.losses import gan
from maskbit_jax.models.discriminator import (
    BLUR_TAPS,
    abstract_discriminator_params,
    adaptive_max_pool,
    blur_kernel,
    build_discriminator,
)

TOL = dict(rtol=1e-5, atol=1e-5)
NAME = "discriminator_tiny"


def _case_ids():
  path = golden_path() / f"{NAME}_io.npz"
  if not path.is_file():
    return ["<no fixtures>"]
  with np.load(path) as data:
    return sorted(int(m.group(1)) for k in data.files if (m := re.fullmatch(r"case(\d+)_logits", k)))


@pytest.fixture(scope="module")
def disc_cfg(fixture_configs):
  return fixture_configs["configs"][NAME]


@pytest.fixture(scope="module")
def state(golden):
  return load_npz(golden / f"{NAME}_state.npz")


@pytest.fixture(scope="module")
def io(golden):
  return load_npz(golden / f"{NAME}_io.npz")


@pytest.fixture(scope="module")
def abstract(disc_cfg):
  return nn.meta.unbox(abstract_discriminator_params(build_discriminator(disc_cfg)))


@pytest.fixture(scope="module")
def model(disc_cfg, state, abstract):
  """(params, jitted apply returning (logits, intermediates)); one compile per input shape."""
  module = build_discriminator(disc_cfg, precision="highest")
  params = jax.tree.map(jnp.asarray, torch_state_to_flax(state, abstract, discriminator_param_mapping(disc_cfg)))

  @jax.jit
  def apply(params, x_bhwc):
    logits, inter = module.apply({"params": params}, x_bhwc, mutable=["intermediates"])
    return logits, {k: v[0] for k, v in inter["intermediates"].items()}

  return params, functools.partial(apply, params)


def _case_input(io, c):
  if f"case{c}_input" in io:
    return io[f"case{c}_input"]
  return io[f"case{c}_input_u8"].astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- discriminator


def test_bin_and_npz_give_the_same_params(golden, disc_cfg, state, abstract):
  mapping = discriminator_param_mapping(disc_cfg)
  from_bin = read_state_dict(golden / f"{NAME}.bin")
  assert list(from_bin) == list(state)
  a = torch_state_to_flax(from_bin, abstract, mapping, source=f"{NAME}.bin")
  b = torch_state_to_flax(state, abstract, mapping)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # and back: the exact tensors, blur buffers included, in file order
  back = flax_to_torch_state(b, mapping, key_order=list(state))
  assert list(back) == list(state)
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)


@pytest.mark.parametrize("c", _case_ids())
def test_logits(model, io, c):
  _, apply = model
  logits, _ = apply(nhwc(_case_input(io, c)))
  want = nhwc(io[f"case{c}_logits"])
  assert logits.shape == want.shape and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), want, err_msg=f"case{c}", **TOL)


def test_intermediates(model, io):
  _, apply = model
  inter_keys = [k for k in io if re.fullmatch(r"case\d+_inter_\w+", k) and not k.endswith("_pool_input")]
  assert inter_keys, "the fixture stores no intermediates"
  for c in sorted({k.split("_")[0] for k in inter_keys}):
    _, acts = apply(nhwc(_case_input(io, int(c[4:]))))
    for key in (k for k in inter_keys if k.startswith(c + "_")):
      name = key[len(c) + len("_inter_"):]
      assert name in acts, f"{key}: the model sows no {name!r} (has {sorted(acts)})"
      want = nhwc(io[key])
      np.testing.assert_allclose(np.asarray(acts[name])[: want.shape[0]], want, err_msg=key, **TOL)


def test_pool_alone(io):
  keys = [k for k in io if k.endswith("_inter_pool_input")]
  assert keys, "the fixture has no stand-alone pooling case"
  for key in keys:
    got = adaptive_max_pool(jnp.asarray(nhwc(io[key])))
    np.testing.assert_array_equal(np.asarray(got), nhwc(io[key.removesuffix("_input")]), err_msg=key)


def _adaptive_max_pool_loops(x_bhwc, out):
  """The torch definition, written with loops: window i = [floor(i*H/out), ceil((i+1)*H/out))."""
  b, h, w, c = x_bhwc.shape
  y = np.empty((b, out, out, c), x_bhwc.dtype)
  for i in range(out):
    for j in range(out):
      r0, r1 = (i * h) // out, -(-((i + 1) * h) // out)
      c0, c1 = (j * w) // out, -(-((j + 1) * w) // out)
      y[:, i, j] = x_bhwc[:, r0:r1, c0:c1].max(axis=(1, 2))
  return y


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (8, 8), (12, 20), (16, 16), (17, 33), (40, 24)])
def test_adaptive_max_pool_any_size(hw):
  x = np.random.RandomState(sum(hw)).standard_normal((2, *hw, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(adaptive_max_pool(jnp.asarray(x), 16)), _adaptive_max_pool_loops(x, 16))


def test_blur_kernels(state):
  for k, taps in BLUR_TAPS.items():
    kernel = blur_kernel(k)
    assert kernel.shape == (k, k) and kernel.dtype == np.float32
    assert kernel.sum() == 1.0 and np.array_equal(kernel, kernel.T)
    np.testing.assert_array_equal(kernel * float(np.sum(taps)) ** 2, np.outer(taps, taps))
  for key in (k for k in state if k.endswith(".kernel")):
    np.testing.assert_array_equal(state[key][0, 0], blur_kernel(state[key].shape[-1]), err_msg=key)


def _mismatch(state, abstract, mapping):
  with pytest.raises(CheckpointMismatchError) as err:
    torch_state_to_flax(state, abstract, mapping)
  return str(err.value)


def test_converter_is_strict(disc_cfg, state, abstract):
  mapping = discriminator_param_mapping(disc_cfg)
  params = [k for k in state if not k.endswith(".kernel")]
  buffers = [k for k in state if k.endswith(".kernel")]
  assert len(buffers) == int(disc_cfg["num_stages"]) * bool(disc_cfg["blur_resample"])

  missing = dict(state)
  del missing[params[-1]]
  assert f"missing key {params[-1]!r}" in _mismatch(missing, abstract, mapping)

  extra = dict(state, **{"blocks.99.0.weight": np.zeros((1, 1, 1, 1), np.float32)})
  assert "unexpected key 'blocks.99.0.weight'" in _mismatch(extra, abstract, mapping)

  shaped = dict(state)
  conv = next(k for k in params if state[k].ndim == 4)
  shaped[conv] = np.zeros(state[conv].shape[:-1] + (state[conv].shape[-1] + 2,), np.float32)
  assert f"shape mismatch for {conv!r}" in _mismatch(shaped, abstract, mapping)

  if buffers:
    wrong = dict(state)
    wrong[buffers[0]] = np.full_like(state[buffers[0]], 1.0 / state[buffers[0]].size)  # a box filter
    assert f"buffer {buffers[0]!r} differs" in _mismatch(wrong, abstract, mapping)

    other_k = next(k for k in BLUR_TAPS if k != state[buffers[0]].shape[-1])
    msg = _mismatch(state, abstract, discriminator_param_mapping(dict(disc_cfg, blur_kernel_size=other_k)))
    assert all(f"shape mismatch for buffer {b!r}" in msg for b in buffers)

    msg = _mismatch(state, abstract, discriminator_param_mapping(dict(disc_cfg, blur_resample=False)))
    assert all(f"unexpected key {b!r}" in msg for b in buffers)

  with pytest.raises(CheckpointMismatchError, match="missing key"):
    deeper = nn.meta.unbox(abstract_discriminator_params(
        build_discriminator(dict(disc_cfg, num_stages=int(disc_cfg["num_stages"]) + 1))))
    torch_state_to_flax(state, deeper, discriminator_param_mapping(dict(disc_cfg, num_stages=int(disc_cfg["num_stages"]) + 1)))


def test_config_validation(disc_cfg):
  with pytest.raises(ValueError, match="name"):
    build_discriminator(dict(disc_cfg, name="Original"))
  with pytest.raises(ValueError, match="blur_kernel_size"):
    build_discriminator(dict(disc_cfg, blur_resample=True, blur_kernel_size=6))
  with pytest.raises(ValueError, match="num_stages"):
    build_discriminator(dict(disc_cfg, num_stages=0))


# ----------------------------------------------------------------------------- GAN helpers


@pytest.fixture(scope="module")
def losses(golden):
  return load_npz(golden / "losses.npz")


def test_gan_losses_on_fixed_logits(losses):
  real, fake = losses["gan_logits_real"], losses["gan_logits_fake"]
  got = {
      "gan_hinge_d": gan.hinge_d_loss(real, fake),
      "gan_hinge_g": gan.hinge_g_loss(fake),
      "gan_vanilla_d": gan.vanilla_d_loss(real, fake),
      "gan_nonsat_d": gan.non_saturating_d_loss(real, fake),
      "gan_nonsat_g": gan.non_saturating_g_loss(fake),
  }
  for key, value in got.items():
    assert value.shape == () and value.dtype == jnp.float32, key
    np.testing.assert_allclose(float(value), float(losses[key]), err_msg=key, **TOL)


@pytest.mark.parametrize("label", [0, 1])
def test_sigmoid_cross_entropy_is_stable(losses, label):
  x = losses["gan_logits_real"]
  got = gan.sigmoid_cross_entropy_with_logits(x, float(label))
  np.testing.assert_allclose(np.asarray(got), losses[f"gan_sigmoid_ce_label{label}"], **TOL)
  assert np.all(np.isfinite(np.asarray(got)))
  grad = jax.grad(lambda v: jnp.sum(gan.sigmoid_cross_entropy_with_logits(v, float(label))))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.nn.sigmoid(x)) - label, atol=1e-6)


def test_lecam_values(losses):
  rows = losses["lecam_inputs_real_fake_emareal_emafake"]
  for row, want in zip(rows, losses["lecam_values"]):
    np.testing.assert_allclose(float(gan.lecam_loss(*row)), float(want), err_msg=str(row), **TOL)


def test_adopt_weight(losses, fixture_configs):
  cfg = fixture_configs["configs"]["loss_main"]
  weight, threshold = float(cfg["discriminator_factor"]), int(cfg["discriminator_start"])
  steps, want = losses["adopt_weight_steps"], losses["adopt_weight_values"]
  for step, value in zip(steps, want):
    assert gan.adopt_weight(weight, int(step), threshold) == value
  jitted = jax.jit(lambda s: gan.adopt_weight(weight, s, threshold))
  np.testing.assert_array_equal(np.asarray(jax.vmap(jitted)(jnp.asarray(steps, jnp.int32))), want.astype(np.float32))
  assert gan.adopt_weight(weight, 0, 1, value=0.5) == 0.5


def _disc_variants(losses):
  return sorted({m.group(1) for k in losses if (m := re.fullmatch(r"disc_(\w+)_call0_lecam_loss", k))})


def test_discriminator_loss_and_lecam_ema(losses, fixture_configs, model):
  """Reference ``VQGANLoss._forward_discriminator`` called twice in a row (README: past discriminator_start).

  The discriminator of ``losses.npz`` is ``discriminator_tiny``; LeCam uses the
  EMA state from BEFORE each call, then the EMA moves (zeros at the start).
  """
  _, apply = model
  logits_real, _ = apply(nhwc(losses["inputs"]))
  logits_fake, _ = apply(nhwc(losses["reconstructions"]))
  variants = _disc_variants(losses)
  assert variants, "losses.npz has no discriminator calls"
  for v in variants:
    cfg = fixture_configs["configs"][f"loss_{v}"]
    d_loss_fn, _ = gan.gan_loss_fns(cfg["discriminator_loss"])
    ema = gan.init_lecam_ema()
    c = 0
    while f"disc_{v}_call{c}_lecam_loss" in losses:
      p = f"disc_{v}_call{c}_"
      real_mean, fake_mean = jnp.mean(logits_real), jnp.mean(logits_fake)
      np.testing.assert_allclose(float(real_mean), float(losses[p + "logits_real"]), err_msg=p, **TOL)
      np.testing.assert_allclose(float(fake_mean), float(losses[p + "logits_fake"]), err_msg=p, **TOL)
      lecam = cfg["lecam_regularization_weight"] * gan.lecam_loss(
          real_mean, fake_mean, ema.real_logits_mean, ema.fake_logits_mean)
      np.testing.assert_allclose(float(lecam), float(losses[p + "lecam_loss"]), err_msg=p + "lecam_loss", **TOL)
      total = cfg["discriminator_factor"] * d_loss_fn(logits_real, logits_fake) + lecam
      np.testing.assert_allclose(float(total), float(losses[p + "discriminator_loss"]), err_msg=p, **TOL)
      ema = gan.lecam_ema_update(ema, losses[p + "logits_real"], losses[p + "logits_fake"])
      np.testing.assert_allclose(float(ema.real_logits_mean), losses[p + "after_ema_real_logits_mean"].item(),
                                 err_msg=p, rtol=1e-5, atol=1e-9)
      np.testing.assert_allclose(float(ema.fake_logits_mean), losses[p + "after_ema_fake_logits_mean"].item(),
                                 err_msg=p, rtol=1e-5, atol=1e-9)
      c += 1
    assert c >= 2, f"{v}: expected at least two discriminator calls"


def test_lecam_ema_is_functional_and_jittable():
  ema = gan.init_lecam_ema()
  step = jax.jit(gan.lecam_ema_update)
  new = step(ema, jnp.float32(2.0), jnp.float32(-4.0))
  assert float(ema.real_logits_mean) == 0.0  # the input state is untouched
  np.testing.assert_allclose([float(new.real_logits_mean), float(new.fake_logits_mean)], [0.002, -0.004], rtol=1e-6)
  # no gradient flows through the EMA update
  g = jax.grad(lambda m: gan.lecam_ema_update(ema, m, m).real_logits_mean)(jnp.float32(1.0))
  assert float(g) == 0.0


def test_bfloat16_compute_keeps_float32_logits(disc_cfg, model, io):
  params, _ = model
  c = _case_ids()[0]
  x = nhwc(_case_input(io, c))
  module = build_discriminator(disc_cfg, dtype=jnp.bfloat16)
  logits = module.apply({"params": params}, x)
  assert logits.dtype == jnp.float32 and logits.shape == nhwc(io[f"case{c}_logits"]).shape
  np.testing.assert_allclose(np.asarray(logits), nhwc(io[f"case{c}_logits"]), atol=0.1)
