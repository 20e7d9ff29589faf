"""Codebook splits now live in ``maskbit_jax.bits`` (one home for the bit convention).

Kept as a re-export so ``maskbit_jax.sampling.factorization.split_tokens`` still imports.
"""

from maskbit_jax.bits import MAX_TOKEN_BITS, combine_tokens, split_tokens

__all__ = ["MAX_TOKEN_BITS", "combine_tokens", "split_tokens"]
