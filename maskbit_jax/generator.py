"""The generator API: ``load_generator`` and ``Generator``.

    gen = maskbit_jax.load_generator("configs/maskbit_generator_12bit.py", "maskbit_generator_12bit.bin")
    logits = gen(tokens, labels)    # split tokens [B, N, M] (mask token where masked) -> [B, N, M, 2^(K/M)]
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from maskbit_jax import checkpointing, hub, runtime, sharding
from maskbit_jax.config import ConfigLike, load_config, vq_model_config
from maskbit_jax.convert.generator_mapping import generator_param_mapping
from maskbit_jax.convert.param_mapping import torch_state_to_flax
from maskbit_jax.models.maskbit_transformer import (MaskBitTransformer, abstract_generator_params,
                                                    build_generator_module, init_generator_params)
from maskbit_jax.models.tokenizer import latent_stride_of

DEFAULT_NCLASS = 1000
SAMPLING_KEYS = ("guidance_scale", "guidance_annealing", "num_steps", "scale_pow", "randomize_temperature",
                 "softmax_temperature", "gen_mask_schedule_strategy", "use_sampling_annealing")


def mlm_model_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  try:
    return cfg.model.mlm_model
  except (AttributeError, KeyError):
    raise ValueError("config has no model.mlm_model section (is this a generator config?)") from None


def generator_fields(cfg: ml_collections.ConfigDict) -> dict:
  """Flat generator fields from a config with the reference nesting (as the reference scripts derive them)."""
  mlm, vq = mlm_model_config(cfg), vq_model_config(cfg)
  if mlm.get("model_cls", "lfq_bert") != "lfq_bert":
    raise ValueError(f"model.mlm_model.model_cls={mlm.get('model_cls')!r} is not supported (only 'lfq_bert')")
  if vq.get("quantizer_type") != "lookup-free":
    raise ValueError("the MaskBit generator works on bit tokens: model.vq_model.quantizer_type must be 'lookup-free'")
  resolution = (cfg.get("dataset", None) or {}).get("preprocessing", {}).get("resolution", 256)
  return dict(img_size=int(resolution), input_stride=latent_stride_of(vq), hidden_dim=int(mlm.hidden_dim),
              depth=int(mlm.depth), heads=int(mlm.heads), mlp_dim=int(mlm.mlp_dim), token_size=int(vq.token_size),
              codebook_splits=int(mlm.get("codebook_splits", 1)), use_prenorm=bool(mlm.get("use_prenorm", False)),
              dropout=float(mlm.get("dropout", 0.0)), nclass=int(cfg.model.get("nclass", DEFAULT_NCLASS)),
              remat_policy=str(mlm.get("remat_policy", "none")))


def sampling_defaults(cfg: ml_collections.ConfigDict) -> dict:
  """The released evaluation settings of a config (``model.mlm_model.*``, or ``sampling.*``), named as
  ``maskbit_jax.sample`` takes them (the config's ``gen_mask_schedule_strategy`` is its
  ``mask_schedule_strategy`` argument), so they can be passed back."""
  out = {}
  for source in (cfg.model.get("mlm_model", {}), cfg.get("sampling", {}) or {}):
    out.update({k: source[k] for k in SAMPLING_KEYS if k in source})
  if "gen_mask_schedule_strategy" in out:
    out["mask_schedule_strategy"] = out.pop("gen_mask_schedule_strategy")
  return out


def check_class_labels(labels, num_classes: int) -> np.ndarray:
  """``labels`` as a non-empty 1-D integer array of class ids in ``[0, num_classes)``, else a ValueError naming why."""
  if isinstance(labels, (list, tuple)):
    # Python ints are checked as they are: numpy would overflow on 2**64 or make an object array of it
    bad = [v for v in labels if isinstance(v, (int, np.integer)) and not isinstance(v, bool)
           and not 0 <= int(v) < num_classes]
    if bad:
      raise ValueError(f"class labels must be in [0, {num_classes}), got {bad[0]}")
  labels = np.asarray(labels)
  if labels.size == 0:
    raise ValueError("labels is empty: give at least one class id")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"class labels must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
  return labels


@dataclasses.dataclass(frozen=True, eq=False)
class Generator:
  """A MaskBit generator with its parameters; calling it is a pure, jitted forward pass."""

  family: ClassVar[str] = "maskbit_generator"
  config: ml_collections.ConfigDict
  module: MaskBitTransformer
  params: Any

  @property
  def token_bits(self) -> int:
    return self.module.token_size

  @property
  def codebook_splits(self) -> int:
    return self.module.codebook_splits

  @property
  def mask_token(self) -> int:
    return self.module.mask_token

  @property
  def num_classes(self) -> int:
    return self.module.nclass

  @property
  def nclass(self) -> int:
    """``num_classes`` under the reference's name (its configs' ``model.nclass``)."""
    return self.num_classes

  @property
  def seq_len(self) -> int:
    return self.module.seq_len

  @property
  def grid(self) -> tuple[int, int]:
    """The square token grid ``(h, w)`` it generates."""
    side = int(round(self.seq_len ** 0.5))
    return side, side

  @property
  def sampling_defaults(self) -> dict:
    return sampling_defaults(self.config)

  @functools.cached_property
  def _apply(self):
    return jax.jit(lambda p, t, l, d: self.module.apply({"params": p}, t, l, d))

  def check_labels(self, labels) -> jax.Array:
    return jnp.asarray(check_class_labels(labels, self.num_classes), jnp.int32)

  def __call__(self, tokens, labels, drop_label_mask=None) -> jax.Array:
    """Split tokens ``[B, N, M]`` (``mask_token`` at masked entries), labels ``[B]`` -> logits ``[B, N, M, C]``.

    ``drop_label_mask`` ``[B]`` bool: True replaces that label by the null class.
    """
    tokens, labels, drop = self.check_inputs(tokens, labels, drop_label_mask)
    return self._apply(self.params, jnp.asarray(tokens, jnp.int32), labels, drop)

  def check_inputs(self, tokens, labels, drop_label_mask=None):
    """``(tokens, labels, drop_label_mask)`` of a forward pass checked: shapes, token and class ranges."""
    tokens = np.asarray(tokens)
    want = (self.seq_len, self.codebook_splits)
    if tokens.ndim != 3 or tokens.shape[1:] != want:
      raise ValueError(f"tokens must be [B, {want[0]}, {want[1]}], got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > self.mask_token):
      raise ValueError(f"split tokens must be in [0, {self.mask_token}] (mask token {self.mask_token}), "
                       f"got values in [{tokens.min()}, {tokens.max()}]")
    labels = self.check_labels(labels)
    if labels.shape[0] != tokens.shape[0]:
      raise ValueError(f"{labels.shape[0]} labels for a batch of {tokens.shape[0]}")
    drop = None if drop_label_mask is None else jnp.asarray(drop_label_mask, bool).reshape(tokens.shape[0])
    return tokens, labels, drop


def sharded_forward(gen: Generator, mesh, *, pad: bool = True):
  """``gen``'s forward pass over ``mesh``: ``fn(tokens, labels, drop_label_mask=None) -> logits`` as
  ``gen(...)`` gives them, with the parameters placed by the rules table (``sharding.RULES``: FSDP and tensor
  axes), the batch split over the batch axes (``data`` x ``fsdp``) and the activation constraints of the
  same table. A batch those axes do not divide is padded by repeating its last row and the padding cut off
  again (``pad=True``, as ``sample_sharded`` does), or refused with ``sharding.BatchNotDivisibleError``."""
  param_sh = sharding.logical_to_sharding(abstract_generator_params(gen.module), mesh)
  params = jax.device_put(gen.params, param_sh)
  batch = functools.partial(sharding.batch_sharding, mesh)
  fwd = jax.jit(lambda p, t, l, d: gen.module.apply({"params": p}, t, l, d),
                in_shardings=(param_sh, batch(3), batch(1), batch(1)), out_shardings=batch(4))

  def forward(tokens, labels, drop_label_mask=None) -> jax.Array:
    tokens, labels, drop = gen.check_inputs(tokens, labels, drop_label_mask)
    drop = np.zeros(tokens.shape[0], bool) if drop is None else drop  # all False: every label kept
    (tokens, labels, drop), n = sharding.pad_batch([tokens.astype(np.int32), labels, drop], mesh, pad=pad)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      logits = fwd(params, tokens, labels, drop)
    return logits if logits.shape[0] == n else logits[:n]

  return forward


def load_generator_params(module: MaskBitTransformer, checkpoint: str | os.PathLike):
  """Loads params from a PyTorch-format file or one of our Orbax checkpoints, strictly."""
  abstract = nn.meta.unbox(abstract_generator_params(module))
  mapping = functools.partial(generator_param_mapping, module.bits_per_split)
  return checkpointing.load_weights(
      checkpoint, abstract, kind="generator", mapping=mapping,
      from_state_dict=lambda state, source: torch_state_to_flax(state, abstract, mapping(), source=source))


def load_generator(config: ConfigLike, checkpoint: str | os.PathLike | None = None, *, random_init: bool = False,
                   seed: int = 0, dtype: str | None = None, precision: str | None = None, overrides=(),
                   registry=None) -> Generator:
  """Builds the MaskBit generator of a config and loads its weights.

  Args as for ``load_tokenizer`` (``load_generator("maskbit_generator_12bit")``: config and released weights
  by name); ``checkpoint`` defaults to
  ``experiment.generator_checkpoint``. Released files (``token_emb.*``) and
  files that already use ``input_proj.*`` both load.
  """
  config, checkpoint = hub.resolve_model(config, checkpoint, "generator", random_init=random_init,
                                         registry_override=registry)
  cfg = load_config(config, overrides)
  compute_dtype, prec = runtime.resolve(cfg, dtype, precision)
  module = build_generator_module(generator_fields(cfg), dtype=compute_dtype, precision=prec)
  if checkpoint is None and not random_init:
    checkpoint = (cfg.get("experiment", None) or {}).get("generator_checkpoint") or None
    checkpoint = hub.resolve_checkpoint(checkpoint, "generator", registry)  # the config may name a release
  if checkpoint is None and not random_init:
    raise ValueError("no generator checkpoint given (argument or experiment.generator_checkpoint); "
                     "pass random_init=True (on the command line: --random_init) for untrained weights")
  params = init_generator_params(module, jax.random.key(seed)) if random_init else load_generator_params(module, checkpoint)
  return Generator(cfg, module, params)
