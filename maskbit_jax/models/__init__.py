"""Flax (linen) modules of maskbit_jax. All image tensors are NHWC."""
