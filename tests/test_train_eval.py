"""The in-training evaluation (``experiment.eval_every``, ``evaluation.*``) of both stages.

Tiny runs with recipe-weight Inception and LPIPS files (rebuilt with numpy, as in test_evaluate.py) log
rFID, IS, PSNR, SSIM, LPIPS (stage I) and FID, IS (stage II); the logged numbers are those of
``python -m maskbit_jax.evaluate`` on the exported weights, the same images and the same count.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import maskbit_jax
from conftest import REPO, drop_simulated_devices, load_npz
from maskbit_jax import checkpointing
from maskbit_jax.convert.checkpoint_files import write_state_dict
from maskbit_jax.cli.evaluate import main as evaluate_main
from maskbit_jax.evaluation.fid import FeatureStats, load_reference_stats, save_reference_stats
from maskbit_jax.train.loop import train
from recipe_weights import recipe_state_dict

TOK = str(REPO / "configs/tokenizer_tiny.py")
GEN = str(REPO / "configs/generator_tiny.py")
RUN = ["--config.runtime.num_devices=1", "--config.dataset.num_threads=1", "--config.training.per_gpu_batch_size=4",
       "--config.experiment.save_every=1000", "--config.experiment.generate_every=1000",
       "--config.experiment.log_every=2", "--config.evaluation.batch_size=8"]


@pytest.fixture(scope="module")
def weights(golden, tmp_path_factory):
  """(inception, LPIPS heads, VGG16) weight files rebuilt from the fixtures' recipes."""
  d = tmp_path_factory.mktemp("weights")
  write_state_dict(d / "inception.safetensors", recipe_state_dict(golden / "recipe_manifests" / "inception.json"))
  heads = {k[len("lpips_"):]: v for k, v in load_npz(golden / "perceptual_recipe_io.npz").items()
           if k.startswith("lpips_lin")}
  if not heads:
    pytest.skip("the fixtures store no LPIPS heads")
  write_state_dict(d / "heads.safetensors", heads)
  write_state_dict(d / "vgg16.safetensors", recipe_state_dict(golden / "recipe_manifests" / "vgg16.json"))
  return {k: str(d / f"{k}.safetensors") for k in ("inception", "heads", "vgg16")}


def tb_scalars(workdir, tag) -> list[float]:
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tensorboard.util import tensor_util

  acc = EventAccumulator(f"{workdir}/tensorboard")
  acc.Reload()
  return [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def run_stage(stage: str, tmp: pathlib.Path, weights: dict) -> dict:
  """A tiny run of ``stage`` evaluated after its one step (eval_every=1), then the same evaluation of the
  exported weights through the CLI's code: ``{"logged", "tensorboard", "cli"}``."""
  overrides = RUN + ["--config.training.max_train_steps=1", "--config.experiment.eval_every=1",
                     f"--config.evaluation.inception_checkpoint={weights['inception']}"]
  if stage == "tokenizer":
    overrides += ["--config.experiment.eval_images=10", f"--config.evaluation.lpips_checkpoint={weights['heads']}",
                  f"--config.evaluation.vgg16_checkpoint={weights['vgg16']}"]
    summary = train(maskbit_jax.load_config(TOK, overrides), str(tmp / "tok"))
    out = tmp / "tok.json"
    assert evaluate_main(["tokenizer", "--config", TOK, *overrides, "--checkpoint", summary["export"],
                          "--data", "synthetic:64:1", "--batch_size", "8", "--num_images_max", "10",
                          "--inception", weights["inception"], "--lpips", weights["heads"],
                          "--vgg16", weights["vgg16"], "--out", str(out)]) == 0
    cli = json.loads(out.read_text())
  else:
    from maskbit_jax.evaluation.runs import evaluate_generator, load_inception as _inception

    tok = maskbit_jax.load_tokenizer(TOK, random_init=True, seed=3)
    tok_dir = tmp / "tokenizer"
    checkpointing.save_params(tok_dir, tok.params, kind="tokenizer", config=tok.config.to_dict())
    ref = tmp / "ref.npz"
    save_reference_stats(ref, FeatureStats().update(np.random.default_rng(0).normal(size=(64, 2048))))
    overrides += ["--config.experiment.eval_images=10", f"--config.experiment.vqgan_checkpoint={tok_dir}",
                  "--config.model.mlm_model.num_steps=2", f"--config.evaluation.ref_stats={ref}"]
    cfg = maskbit_jax.load_config(GEN, overrides)
    summary = train(cfg, str(tmp / "gen"))
    # what `python -m maskbit_jax.evaluate generator --num_images 10 --batch_size 8 --seed 0` computes
    cli = evaluate_generator(maskbit_jax.load_generator(cfg, summary["export"]), maskbit_jax.load_tokenizer(cfg),
                             num_images=10, batch_size=8, seed=0, inception=_inception(weights["inception"], None),
                             ref_stats=load_reference_stats(ref), progress=False)
  work = tmp / ("tok" if stage == "tokenizer" else "gen")
  tb = {k: tb_scalars(work, k) for k in summary["eval"]}
  return {"logged": summary["eval"], "tensorboard": tb, "cli": cli}


def _run(stage: str, tmp_path, weights) -> dict:
  """run_stage in a one-device subprocess (the simulated 8 devices make Inception's compile far slower)."""
  out = tmp_path / "result.json"
  env = drop_simulated_devices(dict(os.environ))
  proc = subprocess.run([sys.executable, __file__, stage, str(tmp_path), json.dumps(weights), str(out)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(out.read_text()) | {"stdout": proc.stdout}


def test_tokenizer_logs_the_cli_metrics(tmp_path, weights):
  result = _run("tokenizer", tmp_path, weights)
  assert "evaluation skips" not in result["stdout"]  # every weights file configured: nothing skipped
  logged, cli = result["logged"], result["cli"]
  assert logged["eval_images"] == cli["num_images"] == 10
  for ours, theirs in (("eval_rfid", "rFID"), ("eval_inception_score", "InceptionScore"), ("eval_psnr", "PSNR"),
                       ("eval_ssim", "SSIM"), ("eval_lpips", "LPIPS"), ("eval_mse", "MSE"),
                       ("eval_codebook_usage", "CodebookUsage")):
    values = result["tensorboard"][ours]
    assert len(values) == 1 and np.isfinite(values[0]), (ours, values)
    np.testing.assert_allclose(values[0], logged[ours], rtol=1e-6, err_msg=ours)
    np.testing.assert_allclose(logged[ours], cli[theirs], rtol=1e-5, err_msg=ours)


@pytest.mark.slow
def test_generator_logs_the_cli_fid(tmp_path, weights):
  """Stage II on a random tokenizer: FID (vs reference statistics) and IS of 10 samples, as the CLI's."""
  result = _run("generator", tmp_path, weights)
  assert "evaluation skips" not in result["stdout"]
  logged, cli = result["logged"], result["cli"]
  assert logged["eval_images"] == cli["num_images"] == 10
  for ours, theirs in (("eval_fid", "FID"), ("eval_inception_score", "InceptionScore")):
    values = result["tensorboard"][ours]
    assert len(values) == 1 and np.isfinite(values[0]), (ours, values)
    np.testing.assert_allclose(logged[ours], cli[theirs], rtol=1e-5, err_msg=ours)


def test_unconfigured_weights_skip_their_metrics_with_one_note(tmp_path, capsys):
  overrides = RUN + ["--config.training.max_train_steps=1", "--config.experiment.eval_images=4"]
  summary = train(maskbit_jax.load_config(TOK, overrides), str(tmp_path / "tok"))
  out = capsys.readouterr().out
  assert out.count("note: the in-training evaluation skips") == 1
  assert "rFID and IS (evaluation.inception_checkpoint is not set)" in out and "LPIPS" in out
  assert {"eval_psnr", "eval_ssim"} <= set(summary["eval"]) and "eval_rfid" not in summary["eval"]
  with pytest.raises(FileNotFoundError, match="evaluation.inception_checkpoint"):
    train(maskbit_jax.load_config(TOK, overrides + [f"--config.evaluation.inception_checkpoint={tmp_path}/no.pth"]),
          str(tmp_path / "tok2"))


if __name__ == "__main__":
  _stage, _tmp, _weights, _out = sys.argv[1:]
  pathlib.Path(_out).write_text(json.dumps(run_stage(_stage, pathlib.Path(_tmp), json.loads(_weights))))
