"""Training losses of maskbit_jax (pure jnp, float32): the generator's masked-token loss and masking."""
