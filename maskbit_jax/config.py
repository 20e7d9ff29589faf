"""Loading configs: packaged names, ml_collections ``.py`` files, reference ``.yaml`` files, or objects.

The repository's ``configs/*.py`` ship in the package as ``maskbit_jax.configs``
(a link to that folder), so ``load_config("generator_tiny")`` works from an
installed wheel as ``load_config("configs/generator_tiny.py")`` does in a checkout.

Configs keep the reference's key names and nesting (``model.vq_model.*``,
``model.mlm_model.*``, ``training.*`` ...), so a user's existing YAML files
load unchanged. Overrides use ml_collections' ``--config.a.b=value`` form: the
value is parsed according to the type already in the config, and an unknown
key is an error (a typo never silently creates a new field).

Every config names its model family in ``model.name`` (``maskbit_jax.registry``); the packaged configs set
it, and a config without one (a reference ``.yaml``, the stored config of an older export) gets it here,
once, from its sections (``infer_model_name``): nothing after loading looks at which keys a config has.
"""

from __future__ import annotations

import difflib
import importlib.resources
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import yaml

from maskbit_jax import paths

ConfigLike = Any  # ConfigDict | Mapping | str | os.PathLike


def _to_config_dict(value: Any) -> ml_collections.ConfigDict:
  if isinstance(value, ml_collections.ConfigDict):
    return value
  return ml_collections.ConfigDict(_plain(value))


def _plain(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def _load_py(path: str, arg: str | None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"_maskbit_config_{abs(hash(path))}", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"cannot import config file {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} has no get_config()")
  cfg = module.get_config(arg) if arg is not None else module.get_config()
  return _to_config_dict(cfg)


def _load_yaml(path: str) -> ml_collections.ConfigDict:
  # OmegaConf resolves the reference files' ${a.b} interpolations and reads
  # YAML 1.1 numbers such as 1e-4 and 1_350_000 the way the reference does.
  from omegaconf import OmegaConf

  container = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
  if not isinstance(container, dict):
    raise ValueError(f"{path} does not hold a mapping at its top level")
  return _to_config_dict(container)


def packaged_config_names() -> list[str]:
  """The names ``load_config`` takes without a path: the ``.py`` files of ``maskbit_jax.configs``."""
  root = importlib.resources.files("maskbit_jax.configs")
  return sorted(f.name[:-3] for f in root.iterdir() if f.name.endswith(".py") and not f.name.startswith("_"))


def _packaged_config_path(name: str) -> str | None:
  """The file of packaged config ``name`` (``generator_tiny`` or ``generator_tiny.py``), or None."""
  if "/" in name or os.sep in name:
    return None
  stem = name[:-3] if name.endswith(".py") else name
  if stem not in packaged_config_names():
    return None
  # installed packages are plain folders (setuptools wheels are not zip-safe here), so the file has a path
  return os.fspath(importlib.resources.files("maskbit_jax.configs") / f"{stem}.py")


def _config_not_found(path: str) -> FileNotFoundError:
  """A one-line error for a config that is neither a file nor a packaged name, with the closest names."""
  stem = os.path.splitext(os.path.basename(path))[0]
  names = packaged_config_names()
  close = difflib.get_close_matches(stem, names, n=3, cutoff=0.6)
  hint = ("; did you mean " + " or ".join(repr(c) for c in close) + "?") if close \
      else f"; packaged configs: {', '.join(names)}"
  what = "config file not found" if ("/" in path or os.sep in path) else "no config file or packaged config named"
  return FileNotFoundError(f"{what}: {path}{hint}")


def _split_arg(spec: str) -> tuple[str, str | None]:
  """``FILE_OR_NAME:ARG`` into its parts; a file whose own name has a colon, and a URL's colon, are no argument."""
  # gs://b/c.py:bits=14 splits at the last colon, gs://b/c.py not at all
  if not paths.exists(spec) and ":" in spec and not (paths.is_url(spec) and "/" in spec.rsplit(":", 1)[1]):
    path, arg = spec.rsplit(":", 1)
    return path, arg
  return spec, None


# What tells the built-in families apart, tested in this order (a generator config also holds its tokenizer's
# model.vq_model): (family, the section of ``model`` it has, a key of ``model.vq_model`` that also shows it).
# BAR-FSQ's reference yamls have no model.siglip2 (the reference hard-codes it); their vq_model has the ViT
# decoder's vit_dec_patch_size, which no MaskBit tokenizer has.
_FAMILY_SECTIONS = (("maskbit_generator", "mlm_model", None), ("bar_generator", "generator", None),
                    ("bar_fsq_tokenizer", "siglip2", "vit_dec_patch_size"), ("maskbit_tokenizer", "vq_model", None))


def infer_model_name(cfg: ml_collections.ConfigDict) -> str | None:
  """The built-in family whose sections ``cfg.model`` has (see ``_FAMILY_SECTIONS``), or None: the one place
  that tells a family from which keys exist, for configs that predate ``model.name``."""
  model = cfg.get("model", None) or {}
  vq = model.get("vq_model", None) or {}
  for name, section, vq_key in _FAMILY_SECTIONS:
    if section in model or (vq_key is not None and vq_key in vq):
      return name
  return None


def _name_model(cfg: ml_collections.ConfigDict, source: str) -> None:
  """Sets ``model.name`` where it is missing and can be inferred; a built-in name that contradicts the
  config's sections is a one-line ValueError."""
  model = cfg.get("model", None)
  if not isinstance(model, ml_collections.ConfigDict):
    return
  inferred = infer_model_name(cfg)
  name = model.get("name", None)
  if name is None:
    if inferred is not None:
      with model.unlocked():
        model.name = inferred
    return
  builtin = [n for n, _, _ in _FAMILY_SECTIONS]
  if name in builtin and inferred is not None and name != inferred:
    section = {n: s for n, s, _ in _FAMILY_SECTIONS}[inferred]
    raise ValueError(f"config {source}: model.name is {name!r} but its sections (model.{section}) make it a "
                     f"{inferred!r} config; fix model.name or the sections")


def load_config(config: ConfigLike, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Returns a fresh ConfigDict from a ConfigDict/mapping, a packaged name, a ``.py`` path or a ``.yaml`` path.

  A name or a ``.py`` path may carry an argument after a colon, passed to its
  ``get_config``: ``tokenizer_tiny:bits=10``, ``configs/maskbit_tokenizer.py:bits=14``.
  A path that exists wins over a packaged config of the same name.
  """
  if isinstance(config, (str, os.PathLike)):
    path, arg = _split_arg(os.fspath(config))
    if not paths.exists(path):
      packaged = _packaged_config_path(path)
      if packaged is None:
        raise _config_not_found(path)
      path = packaged
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".py", ".yaml", ".yml"):
      raise ValueError(f"config {path}: expected a .py or .yaml file")
    with paths.local_copy(path) as local:
      cfg = _load_py(local, arg) if ext == ".py" else _load_yaml(local)
  else:
    cfg = ml_collections.ConfigDict(_plain(config))
  source = os.fspath(config) if isinstance(config, (str, os.PathLike)) else "(given as an object)"
  _name_model(cfg, source)  # before the overrides, so that --config.model.name= finds the field
  for item in overrides:
    apply_override(cfg, item)
  _name_model(cfg, source)
  return cfg


_TYPE_WORDS = {bool: "a boolean", int: "an integer", float: "a number"}


def _parse_scalar(text: str, kind: type, key: str) -> Any:
  """``text`` as a value of ``kind`` (bool, int, float or str), or a one-line error naming the key and type."""
  if kind is bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
  elif kind is str:
    return text
  else:
    try:
      return kind(text)
    except ValueError:
      pass
  raise ValueError(f"--config.{key}: expected {_TYPE_WORDS[kind]}, got {text!r}")


def _parse_sequence(text: str, current: list | tuple, key: str) -> list | tuple:
  """``1,1,2``, ``(1,2,2,4)`` or ``[1,2]`` as ``current``'s type, each item of its items' type."""
  body = text.strip()
  if body[:1] + body[-1:] in ("()", "[]"):
    body = body[1:-1]
  items = [t.strip() for t in body.split(",")] if body.strip() else []
  if items and items[-1] == "":  # (4,) is a one-tuple
    items.pop()
  kinds = {type(v) for v in current}
  seq_type = type(current).__name__
  if len(kinds) == 1 and kinds <= {bool, int, float, str}:
    kind = kinds.pop()
    try:
      return type(current)(_parse_scalar(t, kind, key) for t in items)
    except ValueError:
      raise ValueError(f"--config.{key}: expected a {seq_type} of {kind.__name__}, "
                       f"got {text!r}") from None
  # empty or mixed: each item as YAML reads it
  return type(current)(yaml.safe_load(t) for t in items)


def _parse_like(text: str, current: Any, key: str) -> Any:
  """``text`` parsed as the type of the field's current value (None-valued fields take YAML's reading)."""
  for kind in (bool, int, float, str):  # bool first: True is an int too
    if isinstance(current, kind):
      return _parse_scalar(text, kind, key)
  if isinstance(current, (tuple, list)):
    return _parse_sequence(text, current, key)
  return yaml.safe_load(text)


class ConfigKeyError(KeyError):
  """An override names a field the config does not have (a typo never creates a field)."""

  def __str__(self) -> str:  # KeyError's own str() quotes the message
    return str(self.args[0]) if self.args else ""


def _unknown_field(key: str, dotted: str, node) -> ConfigKeyError:
  """The error for ``--config.KEY`` whose part ``dotted`` is missing, with the closest fields of ``node``."""
  prefix, _, leaf = dotted.rpartition(".")
  fields = list(node.keys()) if hasattr(node, "keys") else []
  close = difflib.get_close_matches(leaf, fields, n=3, cutoff=0.6)
  hint = ("; did you mean " + " or ".join(repr(f"{prefix}.{c}" if prefix else c) for c in close) + "?") if close \
      else (f"; {prefix or 'the config'} has {', '.join(sorted(fields)[:12])}" + (" ..." if len(fields) > 12 else "")
            if fields else "")
  return ConfigKeyError(f"--config.{key}: no field {dotted!r} in the config{hint}")


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
  """Applies one ``a.b.c=value`` override in place (the ``--config.`` prefix is optional)."""
  if item.startswith("--"):
    item = item[2:]
  if item.startswith("config."):
    item = item[len("config."):]
  if "=" not in item:
    raise ValueError(f"override {item!r} must look like a.b.c=value")
  key, text = item.split("=", 1)
  parts = key.split(".")
  node = cfg
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      raise _unknown_field(key, ".".join(parts[:i + 1]), node)
    node = node[part]
  leaf = parts[-1]
  if leaf not in node:
    raise _unknown_field(key, key, node)
  with node.unlocked() if hasattr(node, "unlocked") else _nullcontext():
    node[leaf] = _parse_like(text, node[leaf], key)


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def add_config_help(parser, required: str = "required") -> None:
  """Lists ``--config`` in a CLI's usage and help. (``split_config_args`` takes it and its
  ``--config.x.y=`` overrides out of argv before argparse runs, so argparse never parses it.)
  ``required`` says when the command needs it."""
  parser.add_argument("--config", metavar="CONFIG", help="a packaged config name (e.g. generator_tiny, "
                      "NAME:ARG for a variant), a configs/*.py path (FILE.py:ARG) or a reference "
                      f".yaml; {required}. --config.KEY.SUBKEY=VALUE overrides any of its values")


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
  """Separates ``--config PATH``/``--config=PATH`` and ``--config.x=v`` from other CLI args."""
  config, overrides, rest = None, [], []
  it = iter(argv)
  for arg in it:
    if arg == "--config":
      config = next(it, None)
    elif arg.startswith("--config="):
      config = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      if "=" not in arg:
        arg = f"{arg}={next(it, '')}"
      overrides.append(arg)
    else:
      rest.append(arg)
  return config, overrides, rest


def vq_model_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``model.vq_model`` section, with a clear error if there is none."""
  try:
    return cfg.model.vq_model
  except (AttributeError, KeyError):
    raise ValueError("config has no model.vq_model section (is this a tokenizer config?)") from None
