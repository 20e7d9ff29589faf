"""Released weights by name: a registry name -> its config and a local file, downloaded once.

    path = hub.fetch("maskbit_tokenizer_12bit")         # ~/.cache/huggingface/hub/models--markweber--.../...bin
    tok = maskbit_jax.load_tokenizer("maskbit_tokenizer_12bit")      # config + weights by name

The names and their locations are data (``maskbit_jax.weights_registry``). Hub files download with
``huggingface_hub.hf_hub_download`` into its cache (``HF_HOME``/``HF_HUB_CACHE``; ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` read at each call); plain URLs into ``$HF_HOME/maskbit_jax/<name>/`` through a ``.part``
file that resumes (HTTP Range) and is renamed only once its size and sha256 check out. A file already in
the cache is used without any request. Nothing downloads unless a name asks for it.

Another registry: ``registry=`` (a mapping of name -> entry fields, or a JSON file of one) or the environment
variable ``MASKBIT_WEIGHTS_REGISTRY`` (a JSON file); its entries replace or extend the released ones by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from maskbit_jax import weights_registry

REGISTRY_ENV = "MASKBIT_WEIGHTS_REGISTRY"
MODEL_KINDS = ("tokenizer", "generator", "bar_tokenizer", "bar_generator")
EVAL_KINDS = ("inception", "lpips", "vgg16", "resnet50", "ref_stats")
CHUNK = 1 << 20
RETRIES = 5  # attempts of one URL download that each made progress


class WeightsError(RuntimeError):  # a user error for the commands (cli_errors.USER_ERRORS)
  """A released file that cannot be had: unknown name, offline without it, failed or corrupt download."""


@dataclasses.dataclass(frozen=True)
class Weights:
  """One released file (see ``weights_registry`` for the fields' meaning)."""

  name: str
  kind: str
  config: str | None = None
  repo_id: str | None = None
  filename: str | None = None
  revision: str = "main"
  url: str | None = None
  size: int | None = None
  sha256: str | None = None
  sha256_prefix: str | None = None
  tokenizer: str | None = None
  note: str = ""

  def __post_init__(self):
    if self.kind not in MODEL_KINDS + EVAL_KINDS:
      raise ValueError(f"weights {self.name!r}: kind {self.kind!r} is none of {MODEL_KINDS + EVAL_KINDS}")
    if (self.url is None) == (self.repo_id is None or self.filename is None):
      raise ValueError(f"weights {self.name!r}: give either url or repo_id + filename")

  @property
  def source(self) -> str:
    """Where the file comes from, for messages: its URL (a hub file's at the current ``HF_ENDPOINT``)."""
    if self.url:
      return self.url
    return f"{endpoint()}/{self.repo_id}/resolve/{self.revision}/{self.filename}"


# ---------------------------------------------------------------- settings, read at each call

def _truthy(value: str | None) -> bool:
  return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
  return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
  return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hf_home() -> str:
  default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface")
  return os.path.expanduser(os.environ.get("HF_HOME", default))


def hub_cache() -> str:
  return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home(), "hub"))


def url_cache() -> str:
  """The folder of plain-URL downloads: ``$HF_HOME/maskbit_jax``."""
  return os.path.join(hf_home(), "maskbit_jax")


# ---------------------------------------------------------------- the registry

def _read_registry_file(path: str) -> dict:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise WeightsError(f"weights registry {path}: {e}") from None
  if not isinstance(data, dict):
    raise WeightsError(f"weights registry {path}: expected a JSON object of name -> entry")
  return data


def registry(override: Mapping | str | os.PathLike | None = None) -> dict[str, Weights]:
  """The released entries, then those of ``$MASKBIT_WEIGHTS_REGISTRY``, then ``override``'s, by name."""
  merged = dict(weights_registry.RELEASED)
  if os.environ.get(REGISTRY_ENV):
    merged.update(_read_registry_file(os.environ[REGISTRY_ENV]))
  if isinstance(override, (str, os.PathLike)):
    override = _read_registry_file(os.fspath(override))
  merged.update(override or {})
  out = {}
  for name, entry in merged.items():
    if isinstance(entry, Weights):
      out[name] = dataclasses.replace(entry, name=name)
    else:
      try:
        out[name] = Weights(name=name, **entry)
      except TypeError as e:
        raise WeightsError(f"weights registry entry {name!r}: {e}") from None
  return out


def _looks_like_name(text: str) -> bool:
  return bool(text) and "/" not in text and os.sep not in text and ":" not in text and not os.path.exists(text)


def lookup(name: Any, reg: Mapping[str, Weights] | None = None) -> Weights | None:
  """The entry of ``name`` if it is a registry name (not a path that exists), else None."""
  if not isinstance(name, str) or not _looks_like_name(name):
    return None
  return (reg if reg is not None else registry()).get(name)


def names(kind: str | tuple[str, ...] | None = None, reg: Mapping[str, Weights] | None = None) -> list[str]:
  kinds = (kind,) if isinstance(kind, str) else kind
  return sorted(n for n, w in (reg if reg is not None else registry()).items() if kinds is None or w.kind in kinds)


# ---------------------------------------------------------------- checking a file

def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def check_file(path: str, w: Weights, expected_sha256: str | None = None) -> None:
  """Raises a one-line WeightsError if ``path`` is not ``w``'s file by size or checksum (where known)."""
  if w.size is not None and os.path.getsize(path) != w.size:
    raise WeightsError(f"{w.name}: downloaded {os.path.getsize(path)} bytes, expected {w.size} (from {w.source}); "
                       "the partial file was removed, run again")
  want = (expected_sha256 or w.sha256 or "").lower()
  prefix = (w.sha256_prefix or "").lower()
  if not (want or prefix):
    return
  got = _sha256(path)
  if (want and got != want) or not got.startswith(prefix):
    raise WeightsError(f"{w.name}: sha256 {got} of the file from {w.source} is not the expected "
                       f"{want or prefix + '...'}; the file was removed (a changed upload or a bad transfer)")


# ---------------------------------------------------------------- downloads

def _offline_error(w: Weights, where: str) -> WeightsError:
  return WeightsError(f"{w.name}: not in the cache ({where}) and HF_HUB_OFFLINE is set; it comes from {w.source} "
                      "(run once online, or pass the file's path instead of the name)")


def _remove_hub_file(snapshot_path: str, repo_folder: str) -> None:
  """Removes a hub download (its snapshot link and blob) and the repository's cache folder if nothing else is
  left in it, so that a refused file leaves nothing behind."""
  blob = os.path.realpath(snapshot_path)
  for p in {snapshot_path, blob}:
    if os.path.lexists(p):
      os.remove(p)
  others = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(repo_folder, "snapshots")) for f in files]
  if not others:
    shutil.rmtree(repo_folder, ignore_errors=True)
    shutil.rmtree(os.path.join(os.path.dirname(repo_folder), ".locks", os.path.basename(repo_folder)),
                  ignore_errors=True)


def _fetch_hub(w: Weights) -> str:
  import huggingface_hub
  from huggingface_hub import errors

  cache = hub_cache()
  args = dict(repo_id=w.repo_id, filename=w.filename, revision=w.revision, cache_dir=cache)
  try:  # a warm cache answers without a request (released files do not change under a name)
    return huggingface_hub.hf_hub_download(**args, local_files_only=True)
  except (errors.LocalEntryNotFoundError, errors.EntryNotFoundError, FileNotFoundError):
    pass
  if offline():
    raise _offline_error(w, cache)
  try:
    path = huggingface_hub.hf_hub_download(**args, endpoint=endpoint())
  except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, OSError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise WeightsError(f"{w.name}: download of {w.filename} from {w.source} failed: {first}") from None
  # an LFS file's blob is named by the sha256 the hub publishes for it: check the transfer against it
  blob = os.path.basename(os.path.realpath(path))
  hub_sha = blob if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob) else None
  try:
    check_file(path, w, expected_sha256=w.sha256 or hub_sha)
  except WeightsError:
    _remove_hub_file(path, os.path.join(cache, "models--" + w.repo_id.replace("/", "--")))
    raise
  return path


def _progress(w: Weights, total: int | None, initial: int):
  from huggingface_hub.utils import tqdm  # honours HF_HUB_DISABLE_PROGRESS_BARS

  return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
              desc=os.path.basename(w.url))


def _get(url: str, start: int):
  """An open response for ``url`` from byte ``start`` (a Range request when resuming)."""
  request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
  return urllib.request.urlopen(request, timeout=60)


def _download_part(w: Weights, part: str) -> None:
  """Appends the rest of ``w``'s file to ``part``, resuming after a broken connection while bytes arrive."""
  attempts = 0
  while True:
    have = os.path.getsize(part) if os.path.exists(part) else 0
    try:
      response = _get(w.url, have)
    except urllib.error.HTTPError as e:
      if e.code == 416 and have and (w.size is None or have == w.size):
        return  # the range starts at the end: the part is whole
      raise WeightsError(f"{w.name}: download from {w.url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
      raise WeightsError(f"{w.name}: download from {w.url} failed: {getattr(e, 'reason', e)}") from None
    with response:
      resumed = response.status == 206
      length = response.headers.get("Content-Length")
      total = (int(length) + (have if resumed else 0)) if length else w.size
      got = 0
      with open(part, "ab" if resumed else "wb") as f, _progress(w, total, have if resumed else 0) as bar:
        try:
          for block in iter(lambda: response.read(CHUNK), b""):
            f.write(block)
            got += len(block)
            bar.update(len(block))
        except (OSError, ValueError, http.client.HTTPException) as e:  # a connection closed mid-body
          partial = getattr(e, "partial", b"")  # IncompleteRead: the bytes of the cut block that did arrive
          f.write(partial)
          got += len(partial)
          attempts = 0 if got else attempts + 1
          if attempts >= RETRIES:
            raise WeightsError(f"{w.name}: download from {w.url} keeps breaking off ({e}); run again to "
                               "resume it") from None
          continue
      size = os.path.getsize(part)
      if total is not None and size < total:  # a short body without an error: resume from there
        attempts = 0 if got else attempts + 1
        if attempts >= RETRIES:
          raise WeightsError(f"{w.name}: download from {w.url} stopped at {size} of {total} bytes; run again")
        continue
      return


def _fetch_url(w: Weights) -> str:
  folder = os.path.join(url_cache(), w.name)
  target = os.path.join(folder, os.path.basename(w.url.split("?", 1)[0]))
  if os.path.isfile(target):
    return target
  if offline():
    raise _offline_error(w, folder)
  from huggingface_hub.utils import WeakFileLock

  os.makedirs(folder, exist_ok=True)
  part = target + ".part"
  # one writer of the .part at a time: the processes of one host share the cache (multi-process evaluate)
  with WeakFileLock(target + ".lock"):
    if os.path.isfile(target):  # another process finished it while this one waited
      return target
    _download_part(w, part)
    try:
      check_file(part, w)
    except WeightsError:
      os.remove(part)
      raise
    os.replace(part, target)
  return target


def fetch(name: str | Weights, reg: Mapping | str | os.PathLike | None = None) -> str:
  """The local path of a registry file, downloaded (once) if the cache does not hold it yet."""
  w = name if isinstance(name, Weights) else _entry(name, registry(reg) if not _is_built(reg) else reg)
  return _fetch_hub(w) if w.repo_id else _fetch_url(w)


def _is_built(reg) -> bool:
  return isinstance(reg, Mapping) and all(isinstance(v, Weights) for v in reg.values())


def _entry(name: str, reg: Mapping[str, Weights]) -> Weights:
  if name not in reg:
    import difflib

    close = difflib.get_close_matches(name, list(reg), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else f"; known: {', '.join(sorted(reg))}"
    raise WeightsError(f"no released weights named {name!r}{hint}")
  return reg[name]


# ---------------------------------------------------------------- what the loaders and commands call

_ROLE_WORDS = {"tokenizer": "load_tokenizer", "generator": "load_generator",
               "bar_tokenizer": "load_bar_tokenizer", "bar_generator": "load_bar_generator"}


def weights_for(name: str, role: str, reg: Mapping[str, Weights]) -> Weights:
  """The entry a model of ``role`` loads for registry name ``name``: the entry itself, or a generator's
  tokenizer when a tokenizer is asked for by the generator's name."""
  w = _entry(name, reg)
  if role in ("tokenizer", "bar_tokenizer") and w.kind in ("generator", "bar_generator") and w.tokenizer:
    w = _entry(w.tokenizer, reg)
  # a BAR config may decode with a MaskBit tokenizer, so the tokenizer roles take either family's tokenizer
  fits = {"tokenizer": ("tokenizer", "bar_tokenizer"), "bar_tokenizer": ("tokenizer", "bar_tokenizer")}
  if w.kind not in fits.get(role, (role,)):
    raise WeightsError(f"{name!r} names {w.kind} weights; {_ROLE_WORDS[role]} takes one of "
                       f"{', '.join(names(fits.get(role, (role,)), reg))}")
  return w


def resolve_model(config, checkpoint, role: str, *, random_init: bool = False,
                  registry_override: Mapping | str | os.PathLike | None = None):
  """``(config, checkpoint)`` for a loader: a registry name as ``checkpoint`` becomes its local file; a
  registry name as ``config`` becomes the config of the weights ``role`` loads for it (a generator's name
  asked for a tokenizer: its tokenizer's) and, when no checkpoint is given (and not ``random_init``), their
  file. Paths and ConfigDicts pass unchanged."""
  reg = registry(registry_override)
  checkpoint = resolve_checkpoint(checkpoint, role, reg)
  entry = lookup(os.fspath(config), reg) if isinstance(config, (str, os.PathLike)) else None
  if entry is not None:
    w = weights_for(entry.name, role, reg)  # a generator's name for a tokenizer: that tokenizer's own entry
    if checkpoint is None and not random_init:
      checkpoint = fetch(w, reg)
    config = w.config
  return config, checkpoint


def resolve_file(value: str | None, kind: str, *, resolution: int | None = None,
                 registry_override: Mapping | str | os.PathLike | None = None) -> str | None:
  """An evaluation network's file from a command-line value: ``auto`` (the registry's default for ``kind``;
  ADM statistics by ``resolution``), a registry name, or a path (unchanged)."""
  if not value:
    return value
  reg = registry(registry_override)
  if value == "auto":
    default = weights_registry.DEFAULTS[kind]
    if isinstance(default, dict):
      if resolution not in default:
        raise WeightsError(f"no released {kind} for {resolution} px images; give a file (released: "
                           f"{', '.join(f'{k} px' for k in sorted(default))})")
      default = default[resolution]
    value = default
  w = lookup(value, reg)
  if w is None:
    return value
  if w.kind != kind:
    raise WeightsError(f"{value!r} names {w.kind} weights, not {kind}; {kind}: {', '.join(names(kind, reg)) or 'none'}")
  return fetch(w, reg)


def resolve_checkpoint(checkpoint, role: str, registry_override=None):
  """``checkpoint`` itself, or the local file of the weights a registry name gives a model of ``role``."""
  reg = registry(registry_override)
  entry = lookup(checkpoint, reg) if isinstance(checkpoint, str) else None
  return checkpoint if entry is None else fetch(weights_for(entry.name, role, reg), reg)


def add_download_flag(parser) -> None:
  parser.add_argument("--download", action="store_true",
                      help="take the weights not given on the command line from the release --config names "
                           "(a released name such as maskbit_generator_12bit), downloaded once into the hub cache")


def cli_checkpoint(given: str | None, config_spec: str | None, role: str, download: bool) -> str | None:
  """A command's checkpoint argument: the one given, else with ``--download`` the registry name of the
  weights of ``role`` (``tokenizer`` or ``generator``, either family) released for ``--config``, else None."""
  if given or not download:
    return given
  reg = registry()
  entry = lookup(config_spec, reg) if isinstance(config_spec, str) else None
  if entry is None or entry.kind not in MODEL_KINDS:
    raise WeightsError(f"--download: --config {config_spec!r} is not a released model's name; released: "
                       f"{', '.join(names(MODEL_KINDS, reg))}")
  if role == "generator":
    if entry.kind not in ("generator", "bar_generator"):
      raise WeightsError(f"--download: {entry.name!r} is a tokenizer; give a generator's name as --config")
    return entry.name
  return weights_for(entry.name, "tokenizer", reg).name


def config_of(name: str | None) -> str | None:
  """The config a registry name loads with (for commands given ``--generator NAME`` without ``--config``)."""
  entry = lookup(name)
  return entry.config if entry is not None else None


__all__ = ["REGISTRY_ENV", "Weights", "WeightsError", "add_download_flag", "check_file", "cli_checkpoint", "config_of",
           "fetch", "resolve_checkpoint",
           "hf_home", "hub_cache", "lookup", "names", "offline", "registry", "resolve_file", "resolve_model",
           "url_cache", "weights_for"]
