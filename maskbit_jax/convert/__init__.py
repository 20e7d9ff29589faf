"""Converters between the PyTorch MaskBit checkpoints and this JAX port."""
