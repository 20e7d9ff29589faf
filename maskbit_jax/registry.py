"""Model families by name: a config's ``model.name`` -> what loads, converts, trains and samples that family.

    fam = registry.family_of(cfg)             # cfg.model.name, e.g. "maskbit_generator"
    gen = fam.get("loader")(cfg, checkpoint)  # the family's loader, imported on first use
    registry.register(registry.Family(name="my_gen", role="generator", loader=load_my_gen,
                                      sampler=my_sampler, check_pair=my_check_pair, tokenizer_of=lambda cfg: "my_tok"))

Nothing else in the package tells families apart: configs name theirs (a reference yaml gets its name inferred
once, where ``config.load_config`` reads it), and loaded models carry it as ``model.family``.

The built-in families name their functions by dotted path (``"module:attribute"``), imported the first time a
field is asked for, so importing this module imports no model, converter or training code. A user's family
gives plain callables.

Fields (``None`` where a family has no such part):
  role             "tokenizer" or "generator".
  loader           ``(config, checkpoint=None, **options) -> model`` (``random_init``, ``seed``, ``dtype`` ...).
  checkpoint_kind  the kind its weights are stored and converted as (``checkpointing`` meta "kind", the
                   converter's mapping, the weights registry's role).
  task, task_factory  the training stage name and ``(cfg, mesh, workdir) -> task``.
  generators:      ``sampler(gen, tok, labels, key, **settings) -> dict`` (the pair already checked),
                   ``check_pair(gen, tok)``, ``resolve_settings(gen, overrides) -> settings``,
                   ``sampling_keys`` (the settings it takes), ``tokenizer_of(cfg) -> tokenizer family name``
                   (the tokenizer its bits decode with), ``known_sampler`` (generation with kept bits:
                   ``edit``, ``vary``, ``outpaint``; see ``sampling.editing.generate_known``).
  tokenizers:      ``bits``: "lfq" (MaskBit lookup-free tokens) or "bar_fsq" (BAR's binary FSQ).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable
from typing import Any

ROLES = ("tokenizer", "generator")
TOKENIZER, GENERATOR = ROLES
_CALLABLE_FIELDS = ("loader", "task_factory", "sampler", "check_pair", "resolve_settings", "tokenizer_of",
                    "known_sampler")


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family; the callable fields are callables or ``"module:attribute"`` paths."""

  name: str
  role: str
  loader: Callable | str | None = None
  checkpoint_kind: str | None = None
  task: str | None = None
  task_factory: Callable | str | None = None
  sampler: Callable | str | None = None
  check_pair: Callable | str | None = None
  resolve_settings: Callable | str | None = None
  sampling_keys: tuple[str, ...] = ()
  tokenizer_of: Callable | str | None = None
  known_sampler: Callable | str | None = None
  bits: str | None = None

  def __post_init__(self):
    if self.role not in ROLES:
      raise ValueError(f"family {self.name!r}: role must be one of {ROLES}, got {self.role!r}")

  def get(self, field: str) -> Any:
    """The field's callable, imported on first use; a ValueError naming the family when it has none."""
    if field not in _CALLABLE_FIELDS:
      raise KeyError(f"{field!r} is not a callable field of a family ({', '.join(_CALLABLE_FIELDS)})")
    value = getattr(self, field)
    if value is None:
      raise ValueError(f"model family {self.name!r} ({self.role}) has no {field}")
    return _resolve(value) if isinstance(value, str) else value


def _resolve(path: str) -> Callable:
  module, _, attribute = path.partition(":")
  return getattr(importlib.import_module(module), attribute)


def _bar_tokenizer_of(cfg) -> str:
  """BAR's bits decode with a MaskBit LFQ tokenizer when ``model.vq_model.quantizer_type`` is lookup-free
  (BAR on MaskBit bits), else with BAR's own binary-FSQ tokenizer (the released models)."""
  vq = (cfg.get("model", None) or {}).get("vq_model", None)
  if vq is None:
    raise ValueError("config has no model.vq_model section: cannot tell which tokenizer the bits belong to")
  return "maskbit_tokenizer" if vq.get("quantizer_type") == "lookup-free" else "bar_fsq_tokenizer"


def _maskbit_tokenizer_of(cfg) -> str:
  del cfg
  return "maskbit_tokenizer"


_BUILTIN = (
    # VQGAN+ / LFQ / VQ / MaskGIT / Taming: the variant is model.vq_model.model_class / quantizer_type
    Family(name="maskbit_tokenizer", role=TOKENIZER, loader="maskbit_jax.tokenizer:load_tokenizer",
           checkpoint_kind="tokenizer", task="tokenizer", task_factory="maskbit_jax.train.tasks:TokenizerTask",
           bits="lfq"),
    Family(name="maskbit_generator", role=GENERATOR, loader="maskbit_jax.generator:load_generator",
           checkpoint_kind="generator", task="generator", task_factory="maskbit_jax.train.tasks:GeneratorTask",
           sampler="maskbit_jax.sampling.maskbit_api:generate_samples", check_pair="maskbit_jax.sampling.maskbit_api:check_pair",
           resolve_settings="maskbit_jax.sampling.maskbit_api:resolve_settings",
           sampling_keys=("num_steps", "guidance_scale", "guidance_annealing", "scale_pow", "softmax_temperature",
                          "use_sampling_annealing", "randomize_temperature", "mask_schedule_strategy"),
           tokenizer_of=_maskbit_tokenizer_of, known_sampler="maskbit_jax.sampling.editing:maskbit_known"),
    Family(name="bar_generator", role=GENERATOR, loader="maskbit_jax.bar_generator_api:load_bar_generator",
           checkpoint_kind="bar_generator", task="bar", task_factory="maskbit_jax.train.bar_task:BarTask",
           sampler="maskbit_jax.bar_generator_api:generate_samples", check_pair="maskbit_jax.bar_generator_api:check_pair",
           resolve_settings="maskbit_jax.bar_generator_api:resolve_settings",
           sampling_keys=("guidance_scale", "randomize_temperature", "tokens_allocation"),
           tokenizer_of=_bar_tokenizer_of, known_sampler="maskbit_jax.sampling.editing:bar_known"),
    Family(name="bar_fsq_tokenizer", role=TOKENIZER, loader="maskbit_jax.bar_tokenizer_api:load_bar_fsq_tokenizer",
           checkpoint_kind="bar_tokenizer", task="bar_fsq", task_factory="maskbit_jax.train.bar_fsq_task:BarFsqTask",
           bits="bar_fsq"),
)
BUILTIN_NAMES = tuple(f.name for f in _BUILTIN)
_FAMILIES: dict[str, Family] = {f.name: f for f in _BUILTIN}  # the one table; register() adds to it


def register(family: Family, *, replace: bool = False) -> Family:
  """Adds a model family (its callables plain functions, or dotted paths); ``replace`` to redefine a name."""
  if not isinstance(family, Family):
    raise TypeError(f"register takes a registry.Family, got {type(family).__name__}")
  if family.name in _FAMILIES and not replace:
    raise ValueError(f"model family {family.name!r} is already registered; pass replace=True to redefine it")
  _FAMILIES[family.name] = family
  return family


def unregister(name: str) -> None:
  """Removes a family a user registered (the built-in ones stay)."""
  if name in BUILTIN_NAMES:
    raise ValueError(f"{name!r} is a built-in model family")
  _FAMILIES.pop(name, None)


def names(role: str | None = None) -> list[str]:
  return sorted(n for n, f in _FAMILIES.items() if role is None or f.role == role)


def family(name: str) -> Family:
  """The family called ``name``; an unknown name is a one-line ValueError listing the known ones."""
  found = _FAMILIES.get(name) if isinstance(name, str) else None
  if found is None:
    known = names()
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = ("; did you mean " + " or ".join(repr(c) for c in close) + "?") if close else ""
    raise ValueError(f"unknown model family {name!r} (model.name){hint}; known: {', '.join(known)}")
  return found


def name_of(cfg) -> str:
  """``cfg.model.name`` (set by every packaged config, inferred by ``load_config`` for a reference yaml)."""
  name = (cfg.get("model", None) or {}).get("name", None)
  if not name:
    raise ValueError("the config names no model family (model.name); load it with maskbit_jax.load_config, "
                     f"or set model.name to one of {', '.join(names())}")
  return str(name)


def family_of(cfg) -> Family:
  """The family a config names (``model.name``)."""
  return family(name_of(cfg))


def of(model) -> Family:
  """The family of a loaded tokenizer or generator (its ``family`` attribute, as the protocols have it)."""
  name = getattr(model, "family", None)
  if name is None:
    raise TypeError(f"{type(model).__name__} is not a model of a registered family (it has no .family)")
  return family(name)


def tokenizer_family_of(cfg) -> Family:
  """The tokenizer family of a config: its own family for a tokenizer config, the one its bits decode with
  for a generator config."""
  fam = family_of(cfg)
  return fam if fam.role == TOKENIZER else family(fam.get("tokenizer_of")(cfg))


__all__ = ["BUILTIN_NAMES", "Family", "GENERATOR", "ROLES", "TOKENIZER", "family", "family_of", "name_of", "names",
           "of", "register", "tokenizer_family_of", "unregister"]
