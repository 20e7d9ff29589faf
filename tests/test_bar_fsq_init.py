"""The binary-FSQ projections start as the reference's do: it builds ``FSQ`` after its trunc-normal
re-initialisation, so ``in_proj`` and ``out_proj`` keep torch's ``nn.Linear`` defaults (kernel
``kaiming_uniform_(a=sqrt(5))`` and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from maskbit_jax.models.bar_fsq import BinaryFSQ


@pytest.mark.parametrize("name, fan_in, shape", [("in_proj", 256, (256, 16)), ("out_proj", 16, (16, 512))])
def test_projections_start_uniform_within_one_over_sqrt_fan_in(name, fan_in, shape):
  fsq = BinaryFSQ(token_size=16, in_features=256, out_features=512)
  init = jax.jit(lambda key: nn.meta.unbox(fsq.init(key, jnp.zeros((1, 4, 256)))["params"]))
  draws = [jax.device_get(init(jax.random.key(seed))) for seed in range(8)]  # 8 x 16 biases of in_proj
  bound = 1.0 / np.sqrt(fan_in)
  for leaf, want in (("kernel", shape), ("bias", shape[1:])):
    assert draws[0][name][leaf].shape == want
    x = np.concatenate([np.ravel(d[name][leaf]) for d in draws]).astype(np.float64)
    # inside the bound, reaching close to it, and flat in between (a normal(0.02) or zeros fails here)
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.9 * bound, (name, leaf, np.abs(x).max(), bound)
    np.testing.assert_allclose(x.std(), bound / np.sqrt(3.0), rtol=0.15, err_msg=f"{name}.{leaf}")
    hist = np.histogram(x, bins=4, range=(-bound, bound))[0] / x.size
    np.testing.assert_allclose(hist, 0.25, atol=0.07 if x.size < 1000 else 0.02, err_msg=f"{name}.{leaf}")
