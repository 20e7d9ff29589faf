"""``python -m maskbit_jax.evaluate generator`` for both families, in 1 and 2 processes.

The command runs through ``launch/local_multiprocess.sh`` (1 CPU device per process) on the tiny
configs with random weights and a recipe-weight Inception: 2 processes must write ONE ADM ``.npz``
(the same images, in the same class-balanced order, as 1 process) and give the same FID and IS.
Both run under ``-m slow`` (each takes 2-3 minutes of 2 cores, mostly compiling); the default suite
keeps the 2-process evaluation of tests/test_distributed.py (one ADM file from both processes). 10 images in batches of 4: 3 batches, so the second process has one real batch and one
of padding.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import proc_wait
from maskbit_jax.convert.checkpoint_files import write_state_dict
from maskbit_jax.evaluation.runs import generation_batch_indices, process_generation_batches
from maskbit_jax.evaluation.fid import FeatureStats, save_reference_stats
from recipe_weights import recipe_state_dict

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "local_multiprocess.sh"
NUM_IMAGES, BATCH = 10, 4


@pytest.fixture(scope="module")
def eval_files(golden, tmp_path_factory):
  """(Inception weights rebuilt from the fixtures' recipe, ADM-style reference statistics)."""
  d = tmp_path_factory.mktemp("eval_files")
  write_state_dict(d / "inception.safetensors", recipe_state_dict(golden / "recipe_manifests" / "inception.json"))
  save_reference_stats(d / "ref.npz", FeatureStats().update(np.random.default_rng(0).normal(size=(64, 2048))))
  return d / "inception.safetensors", d / "ref.npz"


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith(("SLURM_", "OMPI_"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
  return env


def _launch(out: pathlib.Path, processes: int, config: str, eval_files, *extra: str) -> dict:
  out.mkdir()
  inception, ref = eval_files
  cmd = ["bash", str(LAUNCH), "-q", "-n", str(processes), "-d", "1", "-l", str(out / "logs"), "--",
         sys.executable, "-m", "maskbit_jax.evaluate", "generator", "--config", str(REPO / config),
         "--random_init", "--num_images", str(NUM_IMAGES), "--batch_size", str(BATCH), "--inception", str(inception),
         "--ref_stats", str(ref), "--samples_npz", str(out / "samples.npz"), "--out", str(out / "result.json"), *extra]
  try:
    run = proc_wait.run(cmd, watch=out / "logs", env=_env(), cwd=REPO)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{processes}-process evaluation made no progress; logs in {out / 'logs'}")
  assert run.returncode == 0, run.stderr[-4000:]
  return json.loads((out / "result.json").read_text())


def _compare_one_and_two_processes(tmp_path, config: str, family: str, eval_files, *extra: str) -> None:
  # both jobs at once: their start-up and compilation overlap
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    jobs = {n: pool.submit(_launch, tmp_path / f"p{n}", n, config, eval_files, *extra) for n in (1, 2)}
    results = {n: job.result() for n, job in jobs.items()}
  for n, r in results.items():
    assert r["complete"] and r["num_images"] == NUM_IMAGES and r["processes"] == n and r["family"] == family
  # one file, no per-process shards left behind
  assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == ["logs", "result.json", "samples.npz"]
  with np.load(tmp_path / "p1" / "samples.npz") as one, np.load(tmp_path / "p2" / "samples.npz") as two:
    assert list(two) == ["arr_0"] and two["arr_0"].dtype == np.uint8 and two["arr_0"].shape[0] == NUM_IMAGES
    np.testing.assert_array_equal(two["arr_0"], one["arr_0"])  # same samples, same (class-balanced) order
  # float64 sums merged over processes: equal up to summation order
  np.testing.assert_allclose(results[2]["FID"], results[1]["FID"], rtol=1e-9)
  np.testing.assert_allclose(results[2]["InceptionScore"], results[1]["InceptionScore"], rtol=1e-9)
  assert results[1]["settings"] == results[2]["settings"]
  print(f"{family}: FID 1 process {results[1]['FID']!r}, 2 processes {results[2]['FID']!r}")


def test_process_batches_cover_every_image_once_in_order():
  for num, batch, count in ((10, 4, 2), (5, 2, 3), (2, 4, 3), (11, 3, 4), (7, 7, 1)):
    steps = [process_generation_batches(num, batch, p, count) for p in range(count)]
    assert len({len(s) for s in steps}) == 1  # the same number of steps (collectives) everywhere
    gathered = []
    for step in range(len(steps[0])):  # what a step's all-gather returns, process by process
      for p in range(count):
        padded, valid = generation_batch_indices(np.arange(num), steps[p][step], batch)
        assert padded.shape == (batch,) and 0 <= padded.min() and padded.max() < num
        gathered.extend(padded[:valid].tolist())
    assert gathered == list(range(num)), (num, batch, count)
  # one process: the batches (and so the keys and samples) of the single-process evaluation
  assert process_generation_batches(10, 4, 0, 1) == [0, 1, 2]


@pytest.mark.slow
def test_bar_generator_evaluation_two_processes_equal_one(tmp_path, eval_files):
  _compare_one_and_two_processes(tmp_path, "configs/bar_tiny.py", "bar", eval_files)
  with open(tmp_path / "p2" / "result.json") as f:
    settings = json.load(f)["settings"]
  assert set(settings) == {"guidance_scale", "randomize_temperature", "tokens_allocation"}  # the config's


@pytest.mark.slow
def test_maskbit_generator_evaluation_two_processes_equal_one(tmp_path, eval_files):
  _compare_one_and_two_processes(tmp_path, "configs/generator_tiny.py", "maskbit", eval_files, "--num_steps", "2")


def test_bar_rejects_maskbit_settings(tmp_path, eval_files):
  from maskbit_jax.cli.evaluate import main

  with pytest.raises(SystemExit, match="--num_steps is a MaskBit setting"):
    main(["generator", "--config", str(REPO / "configs/bar_tiny.py"), "--random_init", "--num_steps", "4",
          "--inception", str(eval_files[0])])
