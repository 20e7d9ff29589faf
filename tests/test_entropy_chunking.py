"""The chunked LFQ entropy equals the full softmax version, in value and gradient, and bounds memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskbit_jax.models.entropy import entropy_terms, lfq_entropy_terms
from maskbit_jax.models.lfq_quantizer import lfq_codebook


def _direct(z, codebook, temperature, gamma):
  affinity = 2.0 * jnp.einsum("xk,nk->xn", z.reshape(-1, z.shape[-1]), codebook, precision="highest")
  return entropy_terms(affinity, temperature, gamma)


@pytest.mark.parametrize("rows, bits, chunk", [(37, 8, 256 * 5), (64, 10, 1024 * 8), (33, 6, 64)])
def test_chunked_equals_direct(rows, bits, chunk):
  z = jax.random.normal(jax.random.key(rows), (rows, bits)) * 0.05
  codebook = lfq_codebook(bits)
  for temperature in (0.01, 1.0):
    direct = _direct(z, codebook, temperature, 1.0)
    chunked = lfq_entropy_terms(z, codebook, temperature, 1.0, chunk_entries=chunk)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(direct), rtol=2e-5, atol=1e-6)
    loss = lambda f: lambda z: f(z)[0] - f(z)[1]
    g_direct = jax.grad(loss(lambda z: _direct(z, codebook, temperature, 1.0)))(z)
    g_chunked = jax.grad(loss(lambda z: lfq_entropy_terms(z, codebook, temperature, 1.0, chunk_entries=chunk)))(z)
    # 1/T amplifies float rounding: compare on the scale of the largest gradient entry
    scale = float(np.max(np.abs(np.asarray(g_direct))))
    np.testing.assert_allclose(np.asarray(g_chunked), np.asarray(g_direct), rtol=1e-4, atol=2e-5 * scale)


def test_18_bit_entropy_gradient_fits_at_16_images():
  """16 images x 256 tokens x 2^18 codes: the direct gradient program needs tens of GiB, the chunked one
  less than 1 GiB (XLA's memory analysis of the compiled CPU program; nothing is executed)."""
  z = jax.ShapeDtypeStruct((16 * 256, 18), jnp.float32)
  codebook = lfq_codebook(18)

  def grad_bytes(fn):
    compiled = jax.jit(jax.grad(lambda z: fn(z)[0] - fn(z)[1])).lower(z).compile()
    mem = compiled.memory_analysis()
    return mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes

  chunked = grad_bytes(lambda z: lfq_entropy_terms(z, codebook, 0.01))
  assert chunked < 1 << 30, chunked
  direct = grad_bytes(lambda z: _direct(z, codebook, 0.01, 1.0))
  assert direct > 8 * chunked, (direct, chunked)
