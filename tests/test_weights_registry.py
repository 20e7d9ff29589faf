"""Released weights by name (maskbit_jax.hub) against a stand-in for the hub and for plain URLs on 127.0.0.1.

The stand-in serves the golden tiny checkpoints under released-style names: the hub's resolve endpoint
(HEAD with X-Repo-Commit / ETag / Content-Length, GET with Range) for ``hf_hub_download``, and plain
file URLs. It counts every request, can break a body off once, and nothing leaves loopback: HF_ENDPOINT
points at it, HF_HOME is the test's folder, the registry is a test file (MASKBIT_WEIGHTS_REGISTRY).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import jax
import numpy as np
import pytest

import maskbit_jax
from maskbit_jax import hub
from test_convert_cli import generator_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandIn(http.server.ThreadingHTTPServer):
  """Files by URL path; ``requests`` logs (method, path, Range header); ``break_once`` maps a path to the
  byte its first GET stops at (with the full Content-Length sent), closing the connection there."""

  daemon_threads = True

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.files: dict[str, bytes] = {}
    self.requests: list[tuple[str, str, str | None]] = []
    self.break_once: dict[str, int] = {}
    self.thread = threading.Thread(target=self.serve_forever, daemon=True)
    self.thread.start()

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}"

  def hub_file(self, repo_id: str, filename: str, data: bytes) -> None:
    self.files[f"/{repo_id}/resolve/main/{filename}"] = data

  def gets(self, path_end: str = "") -> list:
    return [r for r in self.requests if r[0] == "GET" and r[1].endswith(path_end)]


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # quiet
    pass

  def _head(self, send_body: bool):
    server: StandIn = self.server
    server.requests.append((self.command, self.path, self.headers.get("Range")))
    data = server.files.get(self.path.split("?", 1)[0])
    if data is None:
      self.send_response(404)
      self.send_header("Content-Length", "0")
      self.send_header("X-Error-Code", "EntryNotFound")
      self.end_headers()
      return
    start, status = 0, 200
    if self.headers.get("Range"):
      start = int(self.headers["Range"].split("=", 1)[1].split("-", 1)[0])
      status = 206
    body = data[start:]
    self.send_response(status)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
    self.send_header("X-Repo-Commit", COMMIT)
    self.send_header("Accept-Ranges", "bytes")
    if status == 206:
      self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    self.end_headers()
    if not send_body:
      return
    if self.path in server.break_once:
      self.wfile.write(body[: server.break_once.pop(self.path)])
      self.wfile.flush()
      self.close_connection = True
      return
    self.wfile.write(body)

  def do_HEAD(self):
    self._head(send_body=False)

  def do_GET(self):
    self._head(send_body=True)


@pytest.fixture
def server():
  s = StandIn()
  yield s
  s.shutdown()
  s.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
  for key, value in hub_env(tmp_path, server).items():
    monkeypatch.setenv(key, value)
  for key in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    monkeypatch.delenv(key, raising=False)
  return tmp_path


def _config_file(path, cfg: dict) -> str:
  path.write_text(f"def get_config():\n  return {cfg!r}\n")
  return str(path)


def tiny_release(server: StandIn, golden, fixture_configs, folder) -> dict:
  """Serves the golden tiny tokenizer (12-bit LFQ) and the generator on its bits under released-style names
  and returns the registry of them (entries as ``weights_registry``'s), with their configs written to
  ``folder``: ``maskbit_tokenizer_tiny``, ``maskbit_generator_tiny`` (paired), ``fid_inception`` (a plain
  URL; any file serves: the path is what is tested)."""
  tok_bin = (golden / "tokenizer_tiny.bin").read_bytes()
  vq = dict(fixture_configs["configs"]["tokenizer_tiny"])
  tok_cfg = _config_file(folder / "tok_cfg.py", {"model": {"vq_model": vq},
                                                 "dataset": {"preprocessing": {"resolution": 64}}})
  pair = generator_config(fixture_configs, "generator_tiny")  # the tiny generator on the tiny tokenizer's bits
  assert pair["model"]["vq_model"]["token_size"] == vq["token_size"]
  pair["model"]["vq_model"] = vq
  pair["model"]["mlm_model"].update(num_steps=8, guidance_scale=2.0)  # its "released" sampling settings
  gen_cfg = _config_file(folder / "gen_cfg.py", pair)
  server.hub_file("markweber/maskbit_tokenizer_tiny", "maskbit_tokenizer_tiny.bin", tok_bin)
  server.hub_file("markweber/maskbit_generator_tiny", "maskbit_generator_tiny.bin",
                  (golden / "generator_tiny.bin").read_bytes())
  server.files["/fid_weights/pt_inception-tiny.pth"] = tok_bin
  return {
      "maskbit_tokenizer_tiny": dict(kind="tokenizer", repo_id="markweber/maskbit_tokenizer_tiny",
                                     filename="maskbit_tokenizer_tiny.bin", config=tok_cfg),
      "maskbit_generator_tiny": dict(kind="generator", repo_id="markweber/maskbit_generator_tiny",
                                     filename="maskbit_generator_tiny.bin", config=gen_cfg,
                                     tokenizer="maskbit_tokenizer_tiny"),
      "fid_inception": dict(kind="inception", url=f"{server.url}/fid_weights/pt_inception-tiny.pth"),
  }


def hub_env(folder, server: StandIn) -> dict:
  """The environment that sends the hub client to ``server`` and its cache to ``folder``, and nowhere else."""
  return dict(HF_HOME=str(folder / "hf_home"), HF_ENDPOINT=server.url, HF_HUB_DISABLE_TELEMETRY="1",
              HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")


@pytest.fixture
def released(env, server, golden, fixture_configs, monkeypatch):
  """The tiny release plus entries with wrong checksums, as the test registry (MASKBIT_WEIGHTS_REGISTRY)."""
  reg = tiny_release(server, golden, fixture_configs, env)
  tok_bin = server.files["/fid_weights/pt_inception-tiny.pth"]
  reg.update({
      "tokenizer_wrong_sha": dict(reg["maskbit_tokenizer_tiny"], sha256="0" * 64),
      "inception_tiny": dict(kind="inception", url=f"{server.url}/fid_weights/pt_inception-tiny.pth",
                             size=len(tok_bin), sha256=hashlib.sha256(tok_bin).hexdigest()),
      "inception_wrong_sha": dict(kind="inception", url=f"{server.url}/fid_weights/pt_inception-tiny.pth",
                                  sha256="f" * 64),
  })
  (env / "registry.json").write_text(json.dumps(reg))
  monkeypatch.setenv(hub.REGISTRY_ENV, str(env / "registry.json"))
  return dict(tok_cfg=reg["maskbit_tokenizer_tiny"]["config"], gen_cfg=reg["maskbit_generator_tiny"]["config"],
              tok_bin=tok_bin, gen_bin=server.files["/markweber/maskbit_generator_tiny/resolve/main/"
                                                    "maskbit_generator_tiny.bin"])


def _files_under(folder) -> list:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, a.params), jax.tree.map(np.asarray, b.params))


def test_released_registry_is_well_formed():
  reg = hub.registry()
  for name, w in reg.items():
    if w.kind in hub.MODEL_KINDS:
      assert w.config in maskbit_jax.config.packaged_config_names(), name
    if w.tokenizer:
      assert reg[w.tokenizer].kind in ("tokenizer", "bar_tokenizer"), name
  assert reg["maskbit_generator_14bit_128steps"].filename == "maskbit_generator_14bit.bin"
  assert reg["bar_fsq_10bits_res512"].filename == "tokenizer/bar_sfq_10bits_res512.bin"
  assert reg["bar_b"].tokenizer == maskbit_jax.load_config("bar_b").sampling.tokenizer


def test_load_by_name_equals_load_by_path_and_downloads_once(released, server, golden, env):
  by_name = maskbit_jax.load_tokenizer("maskbit_tokenizer_tiny")
  by_path = maskbit_jax.load_tokenizer(released["tok_cfg"], golden / "tokenizer_tiny.bin")
  _assert_same_params(by_name, by_path)
  gen = maskbit_jax.load_generator("maskbit_generator_tiny")
  _assert_same_params(gen, maskbit_jax.load_generator(released["gen_cfg"], golden / "generator_tiny.bin"))
  assert len(server.gets()) == 2
  before = len(server.requests)
  paired = maskbit_jax.load_tokenizer("maskbit_generator_tiny")  # a generator's name: the tokenizer it pairs with
  _assert_same_params(paired, by_name)
  maskbit_jax.load_generator(released["gen_cfg"], "maskbit_generator_tiny")  # a name as the checkpoint
  named_in_config = dict(maskbit_jax.load_config(released["tok_cfg"]).to_dict(),
                         experiment=dict(vqgan_checkpoint="maskbit_tokenizer_tiny"))
  _assert_same_params(maskbit_jax.load_tokenizer(named_in_config), by_name)  # a config's default may be a name
  assert len(server.requests) == before, server.requests[before:]  # the cache answered, no request
  assert any("models--markweber--maskbit_tokenizer_tiny" in f for f in _files_under(env / "hf_home" / "hub"))


def test_registry_passed_as_a_mapping(env, server, golden, fixture_configs):
  server.hub_file("someone/tok", "tok.bin", (golden / "tokenizer_vq_tiny.bin").read_bytes())
  cfg = _config_file(env / "c.py", {"model": {"vq_model": dict(fixture_configs["configs"]["tokenizer_vq_tiny"])}})
  tok = maskbit_jax.load_tokenizer("mine", registry={"mine": dict(kind="tokenizer", repo_id="someone/tok",
                                                                   filename="tok.bin", config=cfg)})
  _assert_same_params(tok, maskbit_jax.load_tokenizer(cfg, golden / "tokenizer_vq_tiny.bin"))


def test_checksum_mismatch_is_refused_and_leaves_nothing(released, env):
  with pytest.raises(hub.WeightsError, match=r"tokenizer_wrong_sha: sha256 .* not the expected 0000"):
    maskbit_jax.load_tokenizer("tokenizer_wrong_sha")
  with pytest.raises(hub.WeightsError, match=r"inception_wrong_sha: sha256 .* not the expected ffff"):
    hub.fetch("inception_wrong_sha")
  # the hub's own cache marker (CACHEDIR.TAG) may stay; no weights, no snapshot, no partial file
  assert [f for f in _files_under(env / "hf_home") if not f.endswith(("CACHEDIR.TAG", ".lock"))] == []


def test_interrupted_downloads_resume(released, server):
  # huggingface_hub keeps what it received in whole 10 MiB chunks: a cut past the first one resumes there
  big = released["tok_bin"]
  assert len(big) > 11 << 20, "the resume test needs a fixture file over 11 MiB"
  hub_path = "/markweber/maskbit_tokenizer_tiny/resolve/main/maskbit_tokenizer_tiny.bin"
  url_path = "/fid_weights/pt_inception-tiny.pth"
  server.break_once.update({hub_path: 11 << 20, url_path: 100_000})
  assert open(hub.fetch("maskbit_tokenizer_tiny"), "rb").read() == big
  assert open(hub.fetch("inception_tiny"), "rb").read() == released["tok_bin"]
  for p, resumed_at in ((hub_path, 10 << 20), (url_path, 100_000)):
    # the first GET broke off; the second asked only for the rest
    assert [r for _, _, r in server.gets(p)] == [None, f"bytes={resumed_at}-"], server.gets(p)


def test_offline(released, server, monkeypatch, env):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(hub.WeightsError, match=r"maskbit_tokenizer_tiny: not in the cache .* HF_HUB_OFFLINE .* "
                                              r"comes from http://127\.0\.0\.1:\d+/markweber/maskbit_tokenizer_tiny/"):
    maskbit_jax.load_tokenizer("maskbit_tokenizer_tiny")
  with pytest.raises(hub.WeightsError, match=r"inception_tiny: not in the cache .*/fid_weights/pt_inception-tiny"):
    hub.fetch("inception_tiny")
  assert server.requests == []
  monkeypatch.delenv("HF_HUB_OFFLINE")
  maskbit_jax.load_tokenizer("maskbit_tokenizer_tiny")
  hub.fetch("inception_tiny")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  before = len(server.requests)
  maskbit_jax.load_tokenizer("maskbit_tokenizer_tiny")  # a warm cache works offline
  assert hub.resolve_file("inception_tiny", "inception") == hub.fetch("inception_tiny")
  assert len(server.requests) == before


def test_names_are_checked(released, server):
  with pytest.raises(hub.WeightsError, match="no released weights named 'maskbit_tokenizer_tin'; did you mean"):
    hub.fetch("maskbit_tokenizer_tin")
  with pytest.raises(hub.WeightsError, match="'maskbit_tokenizer_tiny' names tokenizer weights; load_generator"):
    maskbit_jax.load_generator(released["gen_cfg"], "maskbit_tokenizer_tiny")
  with pytest.raises(hub.WeightsError, match="names tokenizer weights, not inception"):
    hub.resolve_file("maskbit_tokenizer_tiny", "inception")
  # a path is never a name; random weights by name download nothing
  assert hub.resolve_file("some/file.pth", "inception") == "some/file.pth"
  assert hub.resolve_model("maskbit_tokenizer_tiny", None, "tokenizer", random_init=True) == (released["tok_cfg"], None)
  assert server.requests == []


def test_commands_take_names(released, server, tmp_path):
  from maskbit_jax.cli.convert import main as convert_main
  from maskbit_jax.cli.sample import _parse

  # --download: the release --config names, its generator and the tokenizer it pairs with
  _, _, args = _parse(["--config", "maskbit_generator_tiny", "--download", "--classes", "1",
                              "--out", str(tmp_path / "s")])
  assert (args.generator, args.tokenizer) == ("maskbit_generator_tiny", "maskbit_tokenizer_tiny")
  config, _, args = _parse(["--generator", "maskbit_generator_tiny", "--classes", "1",
                                   "--out", str(tmp_path / "s")])
  assert config == released["gen_cfg"]  # a released name's own config when --config is left out
  with pytest.raises(hub.WeightsError, match="--download: --config 'generator_tiny' is not a released model"):
    _parse(["--config", "generator_tiny", "--download", "--classes", "1", "--out", str(tmp_path / "s")])
  assert server.requests == []  # naming is not downloading
  # convert a released file by name: its config and kind come with it
  assert convert_main(["--checkpoint", "maskbit_tokenizer_tiny", "--out", str(tmp_path / "orbax")]) == 0
  _assert_same_params(maskbit_jax.load_tokenizer(released["tok_cfg"], tmp_path / "orbax"),
                      maskbit_jax.load_tokenizer("maskbit_tokenizer_tiny"))
  # the evaluation networks: --inception auto is the registry's fid_inception entry (here the stand-in's)
  assert hub.resolve_file("auto", "inception") == hub.fetch("fid_inception")
  assert len(server.gets("pt_inception-tiny.pth")) == 1
