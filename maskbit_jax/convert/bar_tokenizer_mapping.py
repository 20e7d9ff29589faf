"""Strict name and layout map between BAR tokenizer (``BAR_FSQ``) state dicts and ``BarTokenizer`` params.

Released files are a plain ``{name: tensor}`` dict of ``BAR_FSQ.state_dict()``,
possibly with ``_orig_mod.module.`` (torch.compile + DDP) inside every key; the
reference strips that substring and loads with ``strict=False``. Here loading is
strict by name and shape, with three explicit exceptions:

* the wrapper substring is removed, as in the reference;
* ``encoder.frozen_encoder.*`` / ``encoder.frozen_post_layernorm.*`` are the
  same tensors as ``encoder.siglip.encoder.*`` / ``encoder.siglip.post_layernorm.*``
  (module aliases in the reference). They map onto the one ``siglip`` copy; when
  both names are present their values must be equal;
* with ``skip_unbuilt_parts=True`` the keys of whole parts the model was built
  without (the encoder and ``quantize.in_proj`` of a decode-only tokenizer, the
  training-only ``decoder.clip_projector``) are dropped, which is what the
  reference's ``strict=False`` does when a generator loads its tokenizer.

Everything else (missing keys, unknown keys, shape mismatches) raises
``CheckpointMismatchError`` naming every problem.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from maskbit_jax.convert.param_mapping import (
    CheckpointMismatchError,
    ParamMapping,
    expected_torch_shapes,
    flax_to_torch_state,
    torch_state_to_flax,
)

WRAPPER_SUBSTRING = "_orig_mod.module."
# alias prefix -> the prefix of the same tensors in our tree
ALIASES: tuple[tuple[str, str], ...] = (
    ("encoder.frozen_encoder.", "encoder.siglip.encoder."),
    ("encoder.frozen_post_layernorm.", "encoder.siglip.post_layernorm."),
)
# Parts a BarTokenizer may be built without: (prefix of their keys, flax path that holds them).
OPTIONAL_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("encoder.", ("encoder",)),
    ("quantize.in_proj.", ("quantize", "in_proj")),
    ("decoder.clip_projector.", ("decoder", "clip_projector_0")),
)

BAR_TOKENIZER_RULES = (
    (r"(^|\.)(layers|transformer|ffn|clip_projector)_(\d+)(?=\.|$)", r"\1\2.\3"),
)
BAR_TOKENIZER_KEY_RULES = (
    (r"\.attention\.in_proj\.(weight|bias)$", r".attention.in_proj_\1"),
)


def bar_tokenizer_param_mapping() -> ParamMapping:
  return ParamMapping(BAR_TOKENIZER_RULES, key_rules=BAR_TOKENIZER_KEY_RULES)


def _alias_target(key: str) -> str | None:
  for alias, target in ALIASES:
    if key.startswith(alias):
      return target + key[len(alias):]
  return None


def _source_of(key: str) -> str | None:
  for alias, target in ALIASES:
    if key.startswith(target):
      return alias + key[len(target):]
  return None


TRAINING_ONLY_PART = "decoder.clip_projector."  # the CLIP-alignment head only the tokenizer's training uses


def _in_part(key: tuple[str, ...], path: tuple[str, ...]) -> bool:
  """Whether the flattened param ``key`` lies in the part at ``path`` (``clip_projector_0`` stands for every
  ``clip_projector_<i>``)."""
  head, last = path[:-1], path[-1]
  if len(key) <= len(head) or key[:len(head)] != head:
    return False
  return key[len(head)] == last or (last.endswith("_0") and key[len(head)].startswith(last[:-1]))


def _has_path(tree, path: tuple[str, ...]) -> bool:
  node = tree
  for part in path:
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def canonical_state(state: Mapping[str, Any], *, source: str = "checkpoint") -> "OrderedDict[str, np.ndarray]":
  """Strips the training wrapper from every key and folds the alias copies onto ``encoder.siglip``.

  Raises CheckpointMismatchError when an alias and its target are both present
  but differ (they are one tensor in the reference).
  """
  stripped = OrderedDict((k.replace(WRAPPER_SUBSTRING, ""), v) for k, v in state.items())
  out: "OrderedDict[str, np.ndarray]" = OrderedDict()
  problems = []
  for key, value in stripped.items():
    target = _alias_target(key)
    if target is None:
      out.setdefault(key, value)
      continue
    if target in stripped:
      a, b = np.asarray(stripped[target]), np.asarray(value)
      if a.shape != b.shape or not np.array_equal(a, b):
        problems.append(f"alias {key!r} differs from {target!r} (they are one tensor in the reference)")
    else:
      out[target] = value
  if problems:
    raise CheckpointMismatchError(f"{source} is inconsistent ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
  return out


def bar_tokenizer_state_to_flax(state: Mapping[str, Any], abstract_params, *, source: str = "checkpoint",
                                skip_unbuilt_parts: bool = False) -> dict:
  """PyTorch-layout ``BAR_FSQ`` state dict -> flax params of a ``BarTokenizer`` (strict; see the module docstring).

  ``abstract_params``: the model's unboxed params or ShapeDtypeStructs
  (``nn.meta.unbox(abstract_bar_tokenizer_params(module))``).
  """
  state = canonical_state(state, source=source)
  if skip_unbuilt_parts:
    absent = [prefix for prefix, path in OPTIONAL_PARTS if not _has_path(abstract_params, path)]
    state = OrderedDict((k, v) for k, v in state.items() if not any(k.startswith(p) for p in absent))
  return torch_state_to_flax(state, abstract_params, bar_tokenizer_param_mapping(), source=source)


def _dense_keys(prefix: str) -> list[str]:
  return [f"{prefix}.weight", f"{prefix}.bias"]


def _siglip_layer_keys(prefix: str) -> list[str]:
  keys = _dense_keys(f"{prefix}.layer_norm1")
  for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
    keys += _dense_keys(f"{prefix}.self_attn.{proj}")
  keys += _dense_keys(f"{prefix}.layer_norm2")
  keys += _dense_keys(f"{prefix}.mlp.fc1") + _dense_keys(f"{prefix}.mlp.fc2")
  return keys


def reference_key_order(*, dec_layers: int, enc_layers: int, clip_align: bool, with_encoder: bool = True,
                        with_aliases: bool = True) -> list[str]:
  """Every key of ``BAR_FSQ.state_dict()`` in the reference's order (module registration order)."""
  keys = ["decoder.class_embedding", "decoder.positional_embedding"] + _dense_keys("decoder.ln_pre")
  for i in range(dec_layers):
    p = f"decoder.transformer.{i}"
    keys += _dense_keys(f"{p}.norm1") + _dense_keys(f"{p}.attn.qkv") + _dense_keys(f"{p}.attn.proj")
    keys += _dense_keys(f"{p}.norm2") + _dense_keys(f"{p}.mlp.fc1") + _dense_keys(f"{p}.mlp.fc2")
  keys += _dense_keys("decoder.ln_post") + _dense_keys("decoder.ffn.0") + _dense_keys("decoder.conv_out")
  if clip_align:
    for i in (0, 2, 4):
      keys += _dense_keys(f"decoder.clip_projector.{i}")
  if with_encoder:
    keys += _dense_keys("encoder.siglip.embeddings.patch_embedding")
    keys += ["encoder.siglip.embeddings.position_embedding.weight"]
    for i in range(enc_layers):
      keys += _siglip_layer_keys(f"encoder.siglip.encoder.layers.{i}")
    keys += _dense_keys("encoder.siglip.post_layernorm")
    keys += ["encoder.siglip.head.probe", "encoder.siglip.head.attention.in_proj_weight",
             "encoder.siglip.head.attention.in_proj_bias"] + _dense_keys("encoder.siglip.head.attention.out_proj")
    keys += _dense_keys("encoder.siglip.head.layernorm")
    keys += _dense_keys("encoder.siglip.head.mlp.fc1") + _dense_keys("encoder.siglip.head.mlp.fc2")
    stacks = ("frozen_encoder", "trainable_encoder") if with_aliases else ("trainable_encoder",)
    for stack in stacks:
      for i in range(enc_layers):
        keys += _siglip_layer_keys(f"encoder.{stack}.layers.{i}")
    if with_aliases:
      keys += _dense_keys("encoder.frozen_post_layernorm")
    keys += _dense_keys("encoder.trainable_post_layernorm")
    keys += _dense_keys("quantize.in_proj")
  keys += _dense_keys("quantize.out_proj")
  return keys


def _module_key_order(module, with_aliases: bool) -> list[str]:
  return reference_key_order(dec_layers=module.dec_layers, enc_layers=module.enc_layers,
                             clip_align=module.clip_align, with_encoder=module.with_encoder,
                             with_aliases=with_aliases)


def flax_to_bar_tokenizer_state(params, module, *, with_aliases: bool = True) -> "OrderedDict[str, np.ndarray]":
  """Flax params -> a ``BAR_FSQ`` state dict in the reference's key order (aliases included by default)."""
  out = flax_to_torch_state(params, bar_tokenizer_param_mapping(), released_names=False)
  if with_aliases:
    for key in list(out):
      alias = _source_of(key)
      if alias is not None:
        out[alias] = out[key]
  order = _module_key_order(module, with_aliases)
  ordered = OrderedDict((k, out[k]) for k in order if k in out)
  ordered.update((k, v) for k, v in out.items() if k not in ordered)
  return ordered


def expected_bar_tokenizer_shapes(abstract_params, module, *,
                                  with_aliases: bool = True) -> "OrderedDict[str, tuple[int, ...]]":
  """PyTorch key -> shape for every tensor the model's state dict holds (aliases included by default)."""
  shapes = expected_torch_shapes(bar_tokenizer_param_mapping(), abstract_params)
  if with_aliases:
    for key in list(shapes):
      alias = _source_of(key)
      if alias is not None:
        shapes[alias] = shapes[key]
  order = _module_key_order(module, with_aliases)
  ordered = OrderedDict((k, shapes[k]) for k in order if k in shapes)
  ordered.update((k, v) for k, v in shapes.items() if k not in ordered)
  return ordered


def load_bar_tokenizer_params(checkpoint: str | os.PathLike, abstract_params, *,
                              skip_unbuilt_parts: bool = False) -> Any:
  """Params from one of our Orbax params checkpoints (kind ``bar_tokenizer``) or a PyTorch-format file."""
  from maskbit_jax import checkpointing
  from maskbit_jax.convert import loading
  from maskbit_jax.convert.checkpoint_files import read_state_dict

  checkpoint = os.fspath(checkpoint)
  if checkpointing.is_params_checkpoint(checkpoint):
    # a training export holds every part; a model built without some (a BAR config's tokenizer has no
    # training-only clip projector, a decode-only one no encoder) reads the rest, as from a released file
    absent = [path for prefix, path in OPTIONAL_PARTS if not _has_path(abstract_params, path)
              and (skip_unbuilt_parts or prefix == TRAINING_ONLY_PART)]
    stored = traverse_util.flatten_dict(checkpointing.params_metadata(checkpoint)) if absent else {}
    extra = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in stored.items()
             if any(_in_part(k, path) for path in absent)}
    full = traverse_util.unflatten_dict({**traverse_util.flatten_dict(abstract_params), **extra})
    params = loading.load_params(checkpoint, full, bar_tokenizer_param_mapping(), kind="bar_tokenizer")
    return traverse_util.unflatten_dict({k: v for k, v in traverse_util.flatten_dict(params).items()
                                         if k not in extra}) if extra else params
  params = bar_tokenizer_state_to_flax(read_state_dict(checkpoint), abstract_params, source=checkpoint,
                                       skip_unbuilt_parts=skip_unbuilt_parts)
  return jax.tree.map(jnp.asarray, params)


def flax_param_count(abstract_params) -> int:
  """Number of scalars in a (possibly abstract) param tree."""
  return int(sum(int(np.prod(v.shape)) for v in traverse_util.flatten_dict(abstract_params).values()))


__all__ = [
    "ALIASES", "OPTIONAL_PARTS", "WRAPPER_SUBSTRING", "bar_tokenizer_param_mapping", "bar_tokenizer_state_to_flax",
    "canonical_state", "expected_bar_tokenizer_shapes", "flax_param_count", "flax_to_bar_tokenizer_state",
    "load_bar_tokenizer_params", "reference_key_order",
]


SIGLIP2_FILE_HINT = ("the SigLIP2 so400m naflex weights 'model.safetensors' of google/siglip2-so400m-patch16-naflex, "
                     "published at https://huggingface.co/google/siglip2-so400m-patch16-naflex")
_HF_VISION_PREFIX = "vision_model."


def siglip2_encoder_params(path: str | os.PathLike, abstract_params) -> dict:
  """The ``encoder`` subtree of a ``BarTokenizer`` from the published SigLIP2 file, as the reference builds it.

  ``SigLIP2Encoder`` takes the hub model's ``vision_model`` (``encoder.siglip``: embeddings, the frozen
  stack, post-LayerNorm, head) and starts the trainable stack and its post-LayerNorm as copies of the
  pretrained ones. Keys outside ``vision_model.`` (the text tower, ``logit_scale``) are not used; every
  vision key must map (strict).
  """
  from maskbit_jax import paths
  from maskbit_jax.convert.checkpoint_files import read_state_dict

  path = os.fspath(path)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} not found: put {SIGLIP2_FILE_HINT} there (maskbit_jax never downloads weights)")
  hf = read_state_dict(path)
  state: "OrderedDict[str, Any]" = OrderedDict()
  for key in hf:
    if key.startswith(_HF_VISION_PREFIX):
      state["encoder.siglip." + key[len(_HF_VISION_PREFIX):]] = hf[key]
  copies = (("encoder.siglip.encoder.", "encoder.trainable_encoder."),
            ("encoder.siglip.post_layernorm.", "encoder.trainable_post_layernorm."))
  for key in list(state):
    for source, target in copies:
      if key.startswith(source):
        state[target + key[len(source):]] = state[key]
  converted = torch_state_to_flax(state, {"encoder": abstract_params["encoder"]}, bar_tokenizer_param_mapping(),
                                  source=path)
  return jax.tree.map(jnp.asarray, converted["encoder"])
