"""Evaluation of generated and reconstructed images (FID / Inception Score feature extraction)."""
