"""Training utilities of maskbit_jax: optimizers, learning-rate schedules and the EMA of the weights.

The reference trains with PyTorch AdamW, a ``LambdaLR`` schedule and an
``EMAModel`` wrapper; ``optim`` rebuilds those pieces as optax transforms and
pure functions so a ``jit``-ed train step can carry them in its state.
"""
