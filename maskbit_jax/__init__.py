"""maskbit_jax: MaskBit and BAR bit-token image generators in JAX."""
