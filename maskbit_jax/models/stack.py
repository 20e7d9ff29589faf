"""Depth as a scan: one transformer block traced once, its parameters stacked on a leading layer axis.

A Python loop over blocks unrolls them into the program, so compile time grows
with depth; ``nn.scan`` traces and compiles the block once. Stacked leaves get
the logical axis ``"layers"`` in front of their own names (``sharding.RULES``
keeps it unsharded). Layer i's parameters are slice i of every leaf under the
stack; ``convert.param_mapping.LayerStack`` maps them to and from the
per-layer names of the PyTorch files.

Rematerialisation is a per-block policy (``REMAT_POLICIES``): ``none`` keeps
every activation for the backward pass, ``full`` recomputes the block, and
``dots_saveable`` keeps only matmul outputs.
"""

from __future__ import annotations

import jax
from flax import linen as nn

LAYER_AXIS = "layers"
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat_policy(policy: str) -> str:
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={policy!r}; choose one of {', '.join(REMAT_POLICIES)}")
  return policy


def scanned(block_cls: type[nn.Module], depth: int, *, in_axes: tuple = (), remat_policy: str = "none",
            static_argnums: tuple[int, ...] = (), rng_streams: tuple[str, ...] = ("params", "dropout")
            ) -> type[nn.Module]:
  """``block_cls`` repeated ``depth`` times as one ``nn.scan``.

  The block is called as ``block(carry, *args) -> (carry, ys)``; ``in_axes`` has one entry per
  argument after the carry: 0 for one slice per layer (leading axis ``depth``), ``nn.broadcast`` for
  the same value at every layer; ``static_argnums`` (``self`` is 0) are Python values a rematerialised
  block must not trace. Every layer draws its own ``rng_streams`` (init and dropout);
  ``intermediates`` sown inside come out stacked like the params.
  """
  check_remat_policy(remat_policy)
  if remat_policy != "none":
    # prevent_cse is unneeded inside a scan (and costs fusion)
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat_policy], prevent_cse=False,
                         static_argnums=static_argnums)
  return nn.scan(block_cls, variable_axes={"params": 0, "intermediates": 0},
                 split_rngs={name: True for name in rng_streams}, length=depth, in_axes=tuple(in_axes),
                 metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
