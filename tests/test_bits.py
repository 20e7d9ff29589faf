"""The bit convention (maskbit_jax.bits): LSB first, both spellings, splits, jnp and numpy agree."""

import jax.numpy as jnp
import numpy as np
import pytest

import maskbit_jax
from maskbit_jax import bits


def test_bit_k_has_weight_two_to_the_k():
  k = 12
  eye = jnp.eye(k, dtype=jnp.int32)
  np.testing.assert_array_equal(np.asarray(bits.pack_bits(eye)), 2 ** np.arange(k))
  np.testing.assert_array_equal(np.asarray(bits.bits_to_indices(eye * 2 - 1)), 2 ** np.arange(k))
  np.testing.assert_array_equal(bits.bit_weights_np(k), 2 ** np.arange(k))
  assert bits.bit_weights_np(k).dtype == np.int32


def test_round_trips_and_spellings():
  rng = np.random.default_rng(0)
  idx = rng.integers(0, 2**14, size=(2, 4, 4))
  b01 = bits.unpack_bits(jnp.asarray(idx), 14)
  assert b01.dtype == jnp.int32 and b01.shape == (2, 4, 4, 14)
  np.testing.assert_array_equal(np.asarray(b01), bits.unpack_bits_np(idx, 14))
  np.testing.assert_array_equal(np.asarray(bits.pack_bits(b01)), idx)
  codes = bits.indices_to_bits(jnp.asarray(idx), 14)
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(b01) * 2 - 1)
  np.testing.assert_array_equal(np.asarray(bits.bits_to_indices(codes)), idx)
  np.testing.assert_array_equal(np.asarray(bits.codes_to_bits(codes)), np.asarray(b01))
  np.testing.assert_array_equal(np.asarray(bits.bits_to_codes(b01)), np.asarray(codes))
  flat = bits.indices_to_flat_bits(jnp.asarray(idx), 14)
  assert flat.shape == (2, 16 * 14)
  np.testing.assert_array_equal(np.asarray(bits.unflatten_bits(flat, 14)), np.asarray(b01).reshape(2, 16, 14))


def test_zero_counts_as_the_low_level():
  np.testing.assert_array_equal(np.asarray(bits.bits_to_indices(jnp.asarray([[0.0, 1.0], [-0.0, -1.0]]))), [2, 0])


def test_codebook_rows_are_the_codes_of_their_index():
  np.testing.assert_array_equal(np.asarray(bits.codebook(6)), bits.codebook_np(6))
  np.testing.assert_array_equal(np.asarray(bits.bits_to_indices(bits.codebook(6))), np.arange(64))


def test_splits_are_low_bits_first():
  tokens = jnp.asarray([0b1111_0000_1010], jnp.int32)
  np.testing.assert_array_equal(np.asarray(bits.split_tokens(tokens, 12, 3)), [[0b1010, 0b0000, 0b1111]])
  np.testing.assert_array_equal(np.asarray(bits.combine_tokens(bits.split_tokens(tokens, 12, 3), 12)), tokens)
  with pytest.raises(ValueError, match="must divide"):
    bits.split_tokens(tokens, 12, 5)


def test_too_many_bits_is_refused():
  with pytest.raises(ValueError, match="int32"):
    bits.pack_bits(jnp.zeros((31,), jnp.int32))
  with pytest.raises(ValueError, match="int32"):
    bits.bit_weights_np(31)


def test_public_names_are_the_same_functions():
  from maskbit_jax.models import bar_fsq, lfq_quantizer
  assert maskbit_jax.bits_to_indices is bits.bits_to_indices
  assert maskbit_jax.indices_to_bits is bits.indices_to_bits
  assert lfq_quantizer.lfq_codebook is bits.codebook
  assert bar_fsq.pack_bits is bits.pack_bits and bar_fsq.unpack_bits is bits.unpack_bits
