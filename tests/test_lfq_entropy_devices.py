"""The quantizer's entropy per reference GPU batch (``losses.entropy_over="device"``) or over the whole batch.

The reference takes the LFQ entropy terms on each GPU's own images (16 in the
recipes) and DDP averages the losses and gradients. On 8 simulated devices,
each holding one group of the sharded batch: the grouped terms and their
gradient equal the mean of the 8 single-device values (each on its own
images), the same groups on one device give the same numbers, and the
whole-batch mode on 8 devices equals one device with the whole batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskbit_jax import sharding
from maskbit_jax.config import load_config
from maskbit_jax.losses import vqgan_loss as vl
from maskbit_jax.models.entropy import grouped_terms, lfq_entropy_terms
from maskbit_jax.models.lfq_quantizer import LookupFreeQuantizer, lfq_codebook
from maskbit_jax.models.tokenizer import build_tokenizer_module, init_tokenizer_params, with_entropy_groups
from maskbit_jax.models.vq_quantizer import VectorQuantizer
from maskbit_jax.train.tokenizer_step import entropy_group_size, entropy_groups
from conftest import REPO

DEVICES = 8
PER_DEVICE = 2
BITS = 10
TOL = dict(rtol=2e-6, atol=1e-7)
KEYS = ("per_sample_entropy", "avg_entropy", "entropy_loss")


def _close_grad(actual, desired):
  """float32 reduction order differs between the programs: absolute tolerance relative to the largest entry."""
  np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5 * np.abs(desired).max())


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < DEVICES:
    pytest.skip(f"needs {DEVICES} (simulated) devices")
  return sharding.create_mesh({"data": DEVICES}, jax.devices()[:DEVICES])


def _latents(seed=0, batch=DEVICES * PER_DEVICE):
  return jax.random.normal(jax.random.key(seed), (batch, 4, 4, BITS), jnp.float32) * 0.05


def _terms(quantizer, z):
  """``{per_sample_entropy, avg_entropy, entropy_loss}`` and d entropy_loss / dz."""
  def loss(z):
    _, r = quantizer.apply({}, z, train=True)
    return r["entropy_loss"], {k: r[k] for k in KEYS}
  (_, terms), grad = jax.value_and_grad(loss, has_aux=True)(z)
  return terms, grad


def _on_mesh(quantizer, z, mesh):
  batch_sh = sharding.batch_sharding(mesh, 4)
  with jax.set_mesh(mesh):
    fn = jax.jit(lambda z: _terms(quantizer, z), in_shardings=(batch_sh,), out_shardings=(None, batch_sh))
    terms, grad = fn(jax.device_put(z, batch_sh))
  assert len(grad.sharding.device_set) == DEVICES
  return jax.device_get(terms), np.asarray(grad)


def _one_device(quantizer, z):
  with jax.default_device(jax.devices()[0]):
    terms, grad = jax.jit(lambda z: _terms(quantizer, z))(z)
  return jax.device_get(terms), np.asarray(grad)


def test_device_groups_are_the_mean_of_each_devices_own_values(mesh):
  z = _latents()
  lfq = LookupFreeQuantizer(BITS, entropy_loss_weight=0.02)
  got, grad = _on_mesh(lfq.clone(entropy_groups=DEVICES), z, mesh)
  singles = [_one_device(lfq, z[i * PER_DEVICE:(i + 1) * PER_DEVICE]) for i in range(DEVICES)]
  for key in KEYS:
    np.testing.assert_allclose(got[key], np.mean([t[key] for t, _ in singles]), err_msg=key, **TOL)
  # DDP: the gradient of the mean of the devices' losses is each device's own gradient / devices
  _close_grad(grad, np.concatenate([g for _, g in singles]) / DEVICES)
  # the same groups on one device: the numbers do not depend on the topology
  one, one_grad = _one_device(lfq.clone(entropy_groups=DEVICES), z)
  for key in KEYS:
    np.testing.assert_allclose(got[key], one[key], err_msg=key, **TOL)
  _close_grad(grad, one_grad)
  # and differ from the whole batch's (the average entropy of 2 images is lower than that of 16)
  whole, _ = _one_device(lfq, z)
  assert got["avg_entropy"] < whole["avg_entropy"] - 0.1


def test_whole_batch_mode_equals_one_device_with_the_whole_batch(mesh):
  z = _latents(1)
  lfq = LookupFreeQuantizer(BITS, entropy_loss_weight=0.02)
  got, grad = _on_mesh(lfq, z, mesh)
  want, want_grad = _one_device(lfq, z)
  for key in KEYS:
    np.testing.assert_allclose(got[key], want[key], err_msg=key, **TOL)
  _close_grad(grad, want_grad)


def test_vq_groups(mesh):
  z = jax.random.normal(jax.random.key(2), (DEVICES * PER_DEVICE, 2, 2, 8))
  vq = VectorQuantizer(64, 8, entropy_loss_weight=0.1)
  params = vq.init(jax.random.key(3), z)
  apply = lambda q, z: {k: v for k, v in q.apply(params, z, train=True)[1].items() if k in KEYS}
  got = jax.jit(lambda z: apply(vq.clone(entropy_groups=DEVICES), z))(z)
  singles = [apply(vq, z[i * PER_DEVICE:(i + 1) * PER_DEVICE]) for i in range(DEVICES)]
  for key in KEYS:
    np.testing.assert_allclose(got[key], np.mean([s[key] for s in singles]), err_msg=key, **TOL)


def test_grouped_chunked_entropy_equals_direct():
  z = _latents(4).reshape(DEVICES * PER_DEVICE, -1, BITS)
  codebook = lfq_codebook(BITS)
  direct = grouped_terms(lambda x: lfq_entropy_terms(x, codebook, 0.01), z, 4)
  chunked = jax.jit(lambda z: grouped_terms(lambda x: lfq_entropy_terms(x, codebook, 0.01, chunk_entries=5000),
                                            z, 4))(z)
  np.testing.assert_allclose(chunked, direct, rtol=1e-5)
  with pytest.raises(ValueError, match="3 equal groups"):
    grouped_terms(lambda x: lfq_entropy_terms(x, codebook, 0.01), z, 3)


def test_tokenizer_forward_takes_the_groups():
  cfg = load_config(str(REPO / "configs" / "tokenizer_tiny.py"))
  cfg.model.vq_model.entropy_loss_weight = 0.02  # the tiny recipe trains without the entropy term
  size = cfg.dataset.preprocessing.resolution
  module = build_tokenizer_module(cfg.model.vq_model)
  params = init_tokenizer_params(module, jax.random.key(0), size)
  images = jax.random.uniform(jax.random.key(1), (4, size, size, 3))
  fwd = jax.jit(lambda m, x: {k: v for k, v in m.apply({"params": params}, x, train=True)[1].items() if k in KEYS},
                static_argnums=0)
  got = fwd(with_entropy_groups(module, 2), images)
  halves = [fwd(module, images[:2]), fwd(module, images[2:])]
  for key in KEYS:
    np.testing.assert_allclose(got[key], np.mean([h[key] for h in halves]), err_msg=key, rtol=1e-5, atol=1e-7)
  assert with_entropy_groups(module, 1) is module


def test_config_switch_and_group_counts():
  base = dict(reconstruction_loss="l2", perceptual_loss="lpips", perceptual_weight=0.0, quantizer_weight=1.0,
              discriminator_start=0, discriminator_loss="hinge", discriminator_factor=1.0,
              discriminator_weight=0.1, discriminator_gradient_penalty="none", lecam_regularization_weight=0.0)
  device = vl.VQGANLossConfig.from_config(base)
  assert device.entropy_over == "device"  # the released recipes' behaviour without the key
  assert entropy_group_size(device, 16) == 16
  assert entropy_group_size(vl.VQGANLossConfig.from_config(dict(base, entropy_over="batch")), 16) is None
  with pytest.raises(ValueError, match="entropy_over"):
    vl.VQGANLossConfig.from_config(dict(base, entropy_over="devices"))
  assert entropy_groups(256, 16) == 16     # a 256-image micro-batch: 16 reference GPUs
  assert entropy_groups(8, 16) == 1        # fewer images than one reference GPU held
  assert entropy_groups(256, None) == 1
  with pytest.raises(ValueError, match="entropy groups of 16"):
    entropy_groups(24, 16)
