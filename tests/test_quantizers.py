"""The quantizers alone against ``losses.npz`` (LFQ, VQ with/without l2) and the entropy terms."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_npz, nhwc
from maskbit_jax.models.entropy import entropy_terms
from maskbit_jax.models.lfq_quantizer import LookupFreeQuantizer, bits_to_indices, indices_to_bits, lfq_codebook
from maskbit_jax.models.vq_quantizer import VectorQuantizer

TOL = dict(rtol=1e-5, atol=1e-5)
TERMS = ("quantizer_loss", "commitment_loss", "codebook_loss", "entropy_loss", "per_sample_entropy", "avg_entropy")


@pytest.fixture(scope="module")
def losses(golden):
  return load_npz(golden / "losses.npz")


def _cases(losses, pattern):
  return sorted({m.group(1) for k in losses for m in [re.match(pattern, k)] if m})


def _entropy_settings(fixture_configs):
  # The stand-alone quantizers use the temperature and gamma of the fixture tokenizers.
  cfg = fixture_configs["configs"]["tokenizer_tiny"]
  return cfg["entropy_loss_temperature"], cfg["entropy_gamma"]


def _infer_weights(losses, case, residual):
  """Commitment cost and entropy weight recovered from the stored terms (not assumed)."""
  beta = float(losses[f"{case}_eval_commitment_loss"]) / float(np.mean(residual**2))
  diff = float(losses[f"{case}_train_per_sample_entropy"]) - float(losses[f"{case}_train_avg_entropy"])
  weight = float(losses[f"{case}_train_entropy_loss"]) / diff
  return beta, weight


def _check_mode(losses, case, mode, z_q, result):
  np.testing.assert_allclose(np.asarray(z_q), nhwc(losses[f"{case}_{mode}_z_q"]), **TOL)
  np.testing.assert_array_equal(np.asarray(result["min_encoding_indices"]), losses[f"{case}_{mode}_min_encoding_indices"])
  for term in TERMS:
    key = f"{case}_{mode}_{term}"
    if key in losses:
      np.testing.assert_allclose(float(result[term]), float(losses[key]), err_msg=key, **TOL)


def test_lfq_against_reference(losses, fixture_configs):
  cases = _cases(losses, r"^(lfq\d+)_z$")
  assert cases, "no lfq cases in losses.npz"
  temperature, gamma = _entropy_settings(fixture_configs)
  for case in cases:
    z = nhwc(losses[f"{case}_z"])
    assert np.any(z == 0.0), "the fixture is meant to contain exact zeros"
    q_ref = np.where(z > 0, 1.0, -1.0)
    beta, weight = _infer_weights(losses, case, q_ref - z)
    quant = LookupFreeQuantizer(z.shape[-1], beta, weight, temperature, gamma)
    for mode, train in (("eval", False), ("train", True)):
      z_q, result = quant.apply({}, jnp.asarray(z), train)
      _check_mode(losses, case, mode, z_q, result)
    grad = jax.grad(lambda z: quant.apply({}, z, True)[1]["quantizer_loss"])(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(grad), nhwc(losses[f"{case}_train_grad_loss_wrt_z"]), **TOL)
    bits = losses[f"{case}_bits_of_indices_0_to_15"]
    np.testing.assert_array_equal(np.asarray(indices_to_bits(jnp.arange(bits.shape[0]), bits.shape[1])), bits)


def test_vq_against_reference(losses, fixture_configs):
  cases = _cases(losses, r"^(vq_l2\d)_z$")
  assert cases, "no vq cases in losses.npz"
  temperature, gamma = _entropy_settings(fixture_configs)
  for case in cases:
    z = nhwc(losses[f"{case}_z"])
    codebook = losses[f"{case}_codebook"]
    use_l2 = case.endswith("1")
    residual = nhwc(losses[f"{case}_eval_z_q"]) - (z / np.linalg.norm(z, axis=-1, keepdims=True) if use_l2 else z)
    beta, weight = _infer_weights(losses, case, residual)
    quant = VectorQuantizer(codebook.shape[0], codebook.shape[1], beta, weight, temperature, gamma, use_l2)
    params = {"embedding": {"embedding": jnp.asarray(codebook)}}
    for mode, train in (("eval", False), ("train", True)):
      z_q, result = quant.apply({"params": params}, jnp.asarray(z), train)
      _check_mode(losses, case, mode, z_q, result)
    grad = jax.grad(lambda z: quant.apply({"params": params}, z, True)[1]["quantizer_loss"])(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(grad), nhwc(losses[f"{case}_train_grad_loss_wrt_z"]), **TOL)


def test_entropy_function(losses):
  affinity = losses["entropy_affinity"]
  keys = [k for k in losses if re.match(r"^entropy_T[\d.]+_gamma[\d.]+_per_sample$", k)]
  assert keys
  for key in keys:
    t, g = map(float, re.match(r"^entropy_T([\d.]+)_gamma([\d.]+)_per_sample$", key).groups())
    per_sample, avg = entropy_terms(jnp.asarray(affinity), t, g)
    np.testing.assert_allclose(float(per_sample), float(losses[key]), **TOL)
    np.testing.assert_allclose(float(avg), float(losses[key.replace("_per_sample", "_avg")]), **TOL)


@pytest.mark.parametrize("bits", [1, 5, 12, 18])
def test_bits_indices_round_trip(bits):
  idx = jnp.arange(min(2**bits, 5000), dtype=jnp.int32)
  np.testing.assert_array_equal(np.asarray(bits_to_indices(indices_to_bits(idx, bits))), np.asarray(idx))
  if bits <= 12:
    code = np.asarray(lfq_codebook(bits))
    assert code.shape == (2**bits, bits)
    np.testing.assert_array_equal(np.asarray(bits_to_indices(code)), np.arange(2**bits))


def test_zero_counts_as_minus_one():
  z = jnp.asarray([[[[0.0, 1.0, -0.0, 2.0]]]])
  _, result = LookupFreeQuantizer(4).apply({}, z)
  assert int(result["min_encoding_indices"][0, 0, 0]) == 0b1010


def test_too_many_bits_raise():
  with pytest.raises(ValueError, match="int32"):
    bits_to_indices(jnp.ones((1, 31)))
