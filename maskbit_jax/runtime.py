"""Compute dtype and matmul/conv precision from a config's ``runtime`` section (one place for every loader
and training task).

    dtype, precision = runtime.resolve(cfg)                     # inference: runtime.dtype / runtime.precision
    dtype, precision = runtime.resolve(cfg, dtype="bfloat16")   # an explicit argument wins over the config
    dtype, precision = runtime.training(cfg)                    # + training.mixed_precision: bf16
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = {"default": jax.lax.Precision.DEFAULT, "high": jax.lax.Precision.HIGH,
              "highest": jax.lax.Precision.HIGHEST, None: None}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _section(cfg, name: str) -> Any:
  return cfg.get(name, None) or {}


def _lookup(dtype: str, precision: str):
  if dtype not in DTYPES:
    raise ValueError(f"runtime.dtype={dtype!r}; use one of {sorted(DTYPES)}")
  if precision not in PRECISIONS:
    raise ValueError(f"runtime.precision={precision!r}; use one of default, high, highest")
  return DTYPES[dtype], PRECISIONS[precision]


def resolve(cfg, dtype: str | None = None, precision: str | None = None):
  """``(compute dtype, lax precision)``: the arguments where given, else ``runtime.dtype`` (float32) and
  ``runtime.precision`` (default) of ``cfg``; an unknown name is a one-line ValueError."""
  section = _section(cfg, "runtime")
  return _lookup(dtype or section.get("dtype", "float32"), precision or section.get("precision", "default"))


def training(cfg):
  """``resolve`` for a training run: bf16 compute (float32 params) when ``runtime.dtype`` is bfloat16 or
  ``training.mixed_precision`` is bf16 (fp16 is refused by the optimizer builder, with its reason)."""
  section = _section(cfg, "runtime")
  name = str(section.get("dtype", "float32"))
  mixed = str(_section(cfg, "training").get("mixed_precision", "no")).lower()
  if mixed == "bf16":
    name = "bfloat16"
  elif mixed not in ("no", "fp16"):
    raise ValueError(f"training.mixed_precision={mixed!r}; use 'no' or 'bf16'")
  return _lookup(name, str(section.get("precision", "default")))


__all__ = ["DTYPES", "PRECISIONS", "resolve", "training"]
