"""Sampling of the MaskBit generator: schedules, token splitting, the compiled MaskGIT sampler."""
