"""Typed model configs: one frozen dataclass per model, built once from the reference-nested ConfigDict.

``TokenizerConfig`` (``model.vq_model``: VQGAN+, MaskGIT, Taming), ``MaskBitGeneratorConfig``
(``model.mlm_model`` + ``model.vq_model``), ``BarGeneratorConfig`` (``model.generator`` + ``model.vq_model``)
and ``BarTokenizerConfig`` (``model.vq_model``, ``model.siglip2``, ``model.vit_decoder``). Each
``from_config(cfg)`` is the one place where its family's defaults for absent keys live; the build functions
(``tokenizer.build_tokenizer_module``, ``maskbit_transformer.build_generator_module``,
``bar_generator.build_bar_module``, ``bar_tokenizer.bar_tokenizer_from_config``) take them, and
``fields()`` gives the flat dict the older string-keyed builders used. A missing required key is a one-line
error naming it (ValueError; KeyError for the BAR-FSQ tokenizer, as its reader always raised).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from maskbit_jax.bits import MAX_TOKEN_BITS
from maskbit_jax.models.bar_fsq import LEVELS

_MISSING = dataclasses.MISSING  # a dataclass field without default: the key is required


def _section(cfg: Any, path: str) -> Mapping[str, Any]:
  """``cfg.model.<...>`` by dotted path, or a ValueError naming the missing section."""
  node = cfg
  for part in path.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      raise ValueError(f"config has no {path} section") from None
  return node


def _value(section: Mapping[str, Any], path: str, key: str, default: Any = _MISSING) -> Any:
  value = section.get(key, None) if hasattr(section, "get") else None
  if value is None:
    if default is _MISSING:
      raise ValueError(f"{path}.{key} is required but missing from the config")
    return default
  return value


# ----------------------------------------------------------------------------- MaskBit: the tokenizer

MODEL_CLASSES = ("vqgan+", "maskgit", "taming")
QUANTIZER_TYPES = ("lookup-free", "lookup")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
  try:
    return cfg[key]
  except (KeyError, AttributeError):
    return default


def _require(cfg: Mapping[str, Any], key: str) -> Any:
  value = _get(cfg, key)
  if value is None:
    raise ValueError(f"model.vq_model.{key} is required but missing from the config")
  return value


def codebook_size_of(vq_cfg: Mapping[str, Any]) -> int:
  """The codebook size the model really uses (LFQ: 2^token_size, whatever the config says)."""
  if _get(vq_cfg, "quantizer_type") == "lookup-free":
    return 2 ** int(_require(vq_cfg, "token_size"))
  return int(_require(vq_cfg, "codebook_size"))


def latent_stride_of(vq_cfg: Mapping[str, Any]) -> int:
  if _get(vq_cfg, "model_class") == "taming":
    return 16
  return 2 ** (int(_require(vq_cfg, "num_resolutions")) - 1)


def validate_vq_config(vq_cfg: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first config value that cannot build a tokenizer."""
  model_class = _get(vq_cfg, "model_class")
  if model_class not in MODEL_CLASSES:
    raise ValueError(f"model.vq_model.model_class={model_class!r} is not supported; use one of {MODEL_CLASSES}")
  quantizer_type = _get(vq_cfg, "quantizer_type", "lookup")
  if quantizer_type not in QUANTIZER_TYPES:
    raise ValueError(f"model.vq_model.quantizer_type={quantizer_type!r} is not supported; use one of {QUANTIZER_TYPES}")
  if model_class == "taming":
    if quantizer_type != "lookup":
      raise ValueError("model_class 'taming' only exists with quantizer_type 'lookup'")
    return
  token_size = int(_require(vq_cfg, "token_size"))
  if token_size < 1:
    raise ValueError(f"model.vq_model.token_size must be >= 1, got {token_size}")
  if quantizer_type == "lookup-free" and token_size > MAX_TOKEN_BITS:
    raise ValueError(f"model.vq_model.token_size={token_size} bits is out of range for LFQ (1..{MAX_TOKEN_BITS})")
  if codebook_size_of(vq_cfg) < 1:
    raise ValueError("model.vq_model.codebook_size must be >= 1")
  mult = list(_require(vq_cfg, "channel_mult"))
  num_res = int(_require(vq_cfg, "num_resolutions"))
  if len(mult) != num_res:
    raise ValueError(f"model.vq_model.channel_mult has {len(mult)} entries but num_resolutions is {num_res}")
  hidden = int(_require(vq_cfg, "hidden_channels"))
  for m in mult:
    if (hidden * m) % 32:
      raise ValueError(f"model.vq_model.hidden_channels * channel_mult = {hidden * m} is not divisible by 32 (GroupNorm groups)")
  if int(_require(vq_cfg, "num_res_blocks")) < 1:
    raise ValueError("model.vq_model.num_res_blocks must be >= 1")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """A ``model.vq_model`` tokenizer: VQGAN+ / MaskGIT (conv, LFQ or learned VQ) or Taming's fixed VQGAN."""

  model_class: str
  token_size: int
  quantizer_type: str = "lookup"
  codebook_size: int = 1024       # LFQ: always 2^token_size
  hidden_channels: int = 0        # conv tokenizers only (required there)
  channel_mult: tuple[int, ...] = ()
  num_res_blocks: int = 0
  num_res_blocks_decoder: int | None = None   # default: num_res_blocks
  num_channels: int = 3
  sample_with_conv: bool = True
  commitment_cost: float = 0.25
  entropy_loss_weight: float = 0.0
  entropy_loss_temperature: float = 0.01
  entropy_gamma: float = 1.0
  use_l2_normalisation: bool = False

  @classmethod
  def from_config(cls, cfg: Any) -> "TokenizerConfig":
    return cls.from_vq_model(_section(cfg, "model.vq_model"))

  @classmethod
  def from_vq_model(cls, vq_cfg: Mapping[str, Any]) -> "TokenizerConfig":
    """From the ``model.vq_model`` section alone (validated: the first bad value is a ValueError)."""
    validate_vq_config(vq_cfg)
    d = {k: f.default for k, f in cls.__dataclass_fields__.items()}
    model_class = vq_cfg["model_class"]
    if model_class == "taming":  # the architecture is fixed; only the codebook is read
      return cls(model_class=model_class, token_size=int(_get(vq_cfg, "token_size", 256)),
                 codebook_size=int(_get(vq_cfg, "codebook_size", d["codebook_size"])))
    get = lambda key: _get(vq_cfg, key, d[key])
    blocks_decoder = _get(vq_cfg, "num_res_blocks_decoder")
    return cls(model_class=model_class, token_size=int(vq_cfg["token_size"]),
               quantizer_type=str(vq_cfg["quantizer_type"]), codebook_size=codebook_size_of(vq_cfg),
               hidden_channels=int(vq_cfg["hidden_channels"]),
               channel_mult=tuple(int(m) for m in vq_cfg["channel_mult"]),
               num_res_blocks=int(vq_cfg["num_res_blocks"]),
               num_res_blocks_decoder=None if blocks_decoder is None else int(blocks_decoder),
               num_channels=int(get("num_channels")), sample_with_conv=bool(get("sample_with_conv")),
               commitment_cost=float(get("commitment_cost")), entropy_loss_weight=float(get("entropy_loss_weight")),
               entropy_loss_temperature=float(get("entropy_loss_temperature")),
               entropy_gamma=float(get("entropy_gamma")),
               use_l2_normalisation=bool(get("use_l2_normalisation")))


# ----------------------------------------------------------------------------- MaskBit: the generator

@dataclasses.dataclass(frozen=True)
class MaskBitGeneratorConfig:
  """The MaskBit generator (``LFQBert``): ``model.mlm_model``, with token bits and stride from ``model.vq_model``."""

  hidden_dim: int
  depth: int
  heads: int
  mlp_dim: int
  token_size: int                 # the tokenizer's bits per token
  img_size: int = 256             # dataset.preprocessing.resolution
  input_stride: int = 16          # the tokenizer's latent stride
  codebook_splits: int = 1
  use_prenorm: bool = False
  dropout: float = 0.0
  nclass: int = 1000
  remat_policy: str = "none"

  @classmethod
  def from_config(cls, cfg: Any) -> "MaskBitGeneratorConfig":
    mlm, vq = _section(cfg, "model.mlm_model"), _section(cfg, "model.vq_model")
    if mlm.get("model_cls", "lfq_bert") != "lfq_bert":
      raise ValueError(f"model.mlm_model.model_cls={mlm.get('model_cls')!r} is not supported (only 'lfq_bert')")
    if vq.get("quantizer_type") != "lookup-free":
      raise ValueError("the MaskBit generator works on bit tokens: model.vq_model.quantizer_type must be 'lookup-free'")
    d = cls.__dataclass_fields__
    get = lambda key: _value(mlm, "model.mlm_model", key, d[key].default)
    resolution = (cfg.get("dataset", None) or {}).get("preprocessing", {}).get("resolution", d["img_size"].default)
    return cls(hidden_dim=int(get("hidden_dim")), depth=int(get("depth")), heads=int(get("heads")),
               mlp_dim=int(get("mlp_dim")), token_size=int(_value(vq, "model.vq_model", "token_size")),
               img_size=int(resolution), input_stride=latent_stride_of(vq),
               codebook_splits=int(get("codebook_splits")), use_prenorm=bool(get("use_prenorm")),
               dropout=float(get("dropout")),
               nclass=int(_section(cfg, "model").get("nclass", d["nclass"].default)),
               remat_policy=str(get("remat_policy")))

  def fields(self) -> dict:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- BAR

@dataclasses.dataclass(frozen=True)
class BarGeneratorConfig:
  """The BAR generator: ``model.generator`` (and its ``mbm_head``), token bits from ``model.vq_model``."""

  hidden_size: int
  depth: int                      # num_hidden_layers
  num_heads: int                  # num_attention_heads
  image_seq_len: int
  token_bits: int                 # model.vq_model.token_size
  num_classes: int                # condition_num_classes
  target_codebook_size: int
  patch_size: int = 1
  latent_height: int | None = None
  latent_width: int | None = None
  repeat_class_condition: int = 32
  dropout: float = 0.0
  head_width: int = 2048          # mbm_head.width
  head_layers: int = 3            # mbm_head.num_layers
  remat_policy: str = "none"      # the reference's use_checkpoint=True reads as "full"
  class_label_dropout: float = 0.0  # a training setting of the generator section

  @classmethod
  def from_config(cls, cfg: Any) -> "BarGeneratorConfig":
    try:
      gen, vq = cfg.model.generator, cfg.model.vq_model
    except (AttributeError, KeyError):
      raise ValueError("config has no model.generator / model.vq_model section (is this a BAR config?)") from None
    head = gen.get("mbm_head", {}) or {}
    d = cls.__dataclass_fields__
    get = lambda key, name=None: _value(gen, "model.generator", name or key, d[key].default)
    remat = gen.get("remat_policy", "full" if gen.get("use_checkpoint", False) else d["remat_policy"].default)
    optional_int = lambda v: None if v is None else int(v)
    return cls(hidden_size=int(get("hidden_size")), depth=int(get("depth", "num_hidden_layers")),
               num_heads=int(get("num_heads", "num_attention_heads")), image_seq_len=int(get("image_seq_len")),
               token_bits=int(_value(vq, "model.vq_model", "token_size")),
               num_classes=int(get("num_classes", "condition_num_classes")),
               target_codebook_size=int(get("target_codebook_size")), patch_size=int(get("patch_size")),
               latent_height=optional_int(gen.get("latent_height", None)),
               latent_width=optional_int(gen.get("latent_width", None)),
               repeat_class_condition=int(get("repeat_class_condition")), dropout=float(get("dropout")),
               head_width=int(head.get("width", d["head_width"].default)),
               head_layers=int(head.get("num_layers", d["head_layers"].default)), remat_policy=str(remat),
               class_label_dropout=float(get("class_label_dropout")))

  def fields(self) -> dict:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- BAR: the BAR-FSQ tokenizer

_ABSENT = object()
# The SigLIP2 so400m-patch16-naflex vision tower (Hugging Face config keys).
SIGLIP2_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                      num_channels=3, patch_size=16, num_patches=256, layer_norm_eps=1e-6,
                      hidden_act="gelu_pytorch_tanh")
# SigLIP2Decoder's hard-coded ViT-L size.
VIT_DECODER_L = dict(width=1024, num_layers=24, num_heads=16)


def _bar_get(node: Any, key: str, default: Any = _ABSENT) -> Any:
  for i, part in enumerate(key.split(".")):
    value = node.get(part, _ABSENT) if hasattr(node, "get") else _ABSENT
    if value is _ABSENT:
      if default is not _ABSENT:
        return default
      raise KeyError(f"config key {key!r} is missing (no {'.'.join(key.split('.')[:i + 1])!r})")
    node = value
  return node


def _bar_section(config: Any, key: str, defaults: Mapping[str, Any]) -> dict:
  given = _bar_get(config, key, None)
  given = {} if given is None else dict(given.to_dict() if hasattr(given, "to_dict") else given)
  unknown = set(given) - set(defaults) - {"attention_dropout", "_attn_implementation", "image_size"}
  if unknown:
    raise KeyError(f"unknown keys in {key}: {sorted(unknown)}")
  return {**defaults, **given}


@dataclasses.dataclass(frozen=True)
class BarTokenizerConfig:
  """The BAR-FSQ tokenizer: ``model.vq_model``, ``model.siglip2`` and ``model.vit_decoder`` (both default to
  the released sizes, ``SIGLIP2_SO400M`` / ``VIT_DECODER_L``), the image size from ``dataset.preprocessing``."""

  token_size: int
  image_size: int                 # dataset.preprocessing.crop_size
  dec_patch_size: int             # model.vq_model.vit_dec_patch_size
  dec_width: int = VIT_DECODER_L["width"]
  dec_layers: int = VIT_DECODER_L["num_layers"]
  dec_heads: int = VIT_DECODER_L["num_heads"]
  clip_align: bool = False        # losses.clip_loss_weight > 0
  clip_align_layer_id: int = 2
  clip_target_width: int = SIGLIP2_SO400M["hidden_size"]   # clip_gt is the SigLIP2 stack's output
  enc_width: int = SIGLIP2_SO400M["hidden_size"]
  enc_layers: int = SIGLIP2_SO400M["num_hidden_layers"]
  enc_heads: int = SIGLIP2_SO400M["num_attention_heads"]
  enc_mlp_dim: int = SIGLIP2_SO400M["intermediate_size"]
  enc_num_patches: int = SIGLIP2_SO400M["num_patches"]
  enc_patch_size: int = SIGLIP2_SO400M["patch_size"]
  enc_layer_norm_eps: float = SIGLIP2_SO400M["layer_norm_eps"]
  enc_hidden_act: str = SIGLIP2_SO400M["hidden_act"]
  num_channels: int = SIGLIP2_SO400M["num_channels"]

  @classmethod
  def from_config(cls, config: Any) -> "BarTokenizerConfig":
    """A missing required key is a KeyError naming it, an unknown ``siglip2`` / ``vit_decoder`` key too."""
    token_size = int(_bar_get(config, "model.vq_model.token_size"))
    codebook_size = _bar_get(config, "model.vq_model.codebook_size", None)
    if codebook_size is not None and int(codebook_size) != LEVELS ** token_size:
      raise ValueError(f"codebook_size {codebook_size} != {LEVELS} ** token_size {token_size}")
    siglip = _bar_section(config, "model.siglip2", SIGLIP2_SO400M)
    if float(siglip.get("attention_dropout", 0.0)) != 0.0:
      raise ValueError("SigLIP2 attention_dropout is not implemented (the released model has 0)")
    dec = _bar_section(config, "model.vit_decoder", VIT_DECODER_L)
    return cls(
        token_size=token_size, image_size=int(_bar_get(config, "dataset.preprocessing.crop_size")),
        dec_patch_size=int(_bar_get(config, "model.vq_model.vit_dec_patch_size")),
        dec_width=int(dec["width"]), dec_layers=int(dec["num_layers"]), dec_heads=int(dec["num_heads"]),
        clip_align=float(_bar_get(config, "losses.clip_loss_weight", 0.0)) > 0.0,
        clip_align_layer_id=int(_bar_get(config, "model.vq_model.clip_align_layer_id", 2)),
        clip_target_width=int(siglip["hidden_size"]), enc_width=int(siglip["hidden_size"]),
        enc_layers=int(siglip["num_hidden_layers"]), enc_heads=int(siglip["num_attention_heads"]),
        enc_mlp_dim=int(siglip["intermediate_size"]), enc_num_patches=int(siglip["num_patches"]),
        enc_patch_size=int(siglip["patch_size"]), enc_layer_norm_eps=float(siglip["layer_norm_eps"]),
        enc_hidden_act=str(siglip["hidden_act"]), num_channels=int(siglip["num_channels"]))

  def fields(self) -> dict:
    return dataclasses.asdict(self)
