"""The evaluation CLIs end to end on CPU with recipe-weight networks (no downloads)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import maskbit_jax
from conftest import REPO, load_npz, tokenizer_config
from maskbit_jax.convert.checkpoint_files import write_state_dict
from maskbit_jax.data.sources import SyntheticSource
from maskbit_jax.cli.evaluate import main as evaluate_main
from maskbit_jax.evaluation.runs import class_balanced_labels, evaluate_tokenizer
from maskbit_jax.evaluation.codebook import CodebookStats
from maskbit_jax.evaluation.fid import FeatureStats, fid_from_stats, save_reference_stats
from maskbit_jax.evaluation.reconstruction import ReconstructionMetrics
from recipe_weights import recipe_state_dict


@pytest.fixture(scope="module")
def weights(golden, tmp_path_factory):
  """Inception and LPIPS weight files rebuilt from the fixtures' recipes."""
  d = tmp_path_factory.mktemp("weights")
  write_state_dict(d / "inception.safetensors", recipe_state_dict(golden / "recipe_manifests" / "inception.json"))
  vgg = recipe_state_dict(golden / "recipe_manifests" / "vgg16.json")
  heads = {k[len("lpips_"):]: v for k, v in load_npz(golden / "perceptual_recipe_io.npz").items()
           if k.startswith("lpips_lin")}
  return d, vgg, heads


def _lpips_files(weights):
  d, vgg, heads = weights
  if not heads or not all(k.startswith("lin") for k in heads):
    pytest.skip("the fixtures store no LPIPS heads under the expected names")
  write_state_dict(d / "heads.safetensors", heads)
  write_state_dict(d / "vgg16.safetensors", vgg)
  return d / "heads.safetensors", d / "vgg16.safetensors"


def test_class_balanced_labels():
  labels = class_balanced_labels(2503, 1000)
  counts = np.bincount(labels, minlength=1000)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 2503


def test_tokenizer_evaluation_counts_every_image_once(golden, fixture_configs, weights):
  from maskbit_jax.evaluation.runs import load_inception as _inception

  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  source = SyntheticSource(11, 32, seed=5)  # 11 images: the last of 2 batches of 8 is padded
  inception = _inception(str(weights[0] / "inception.safetensors"), None)
  result = evaluate_tokenizer(tok, source, batch_size=8, num_images=None, inception=inception, lpips=None,
                              progress=False)
  assert result["complete"] and result["num_images"] == 11
  # the same numbers computed in one pass without batching or padding
  images = np.stack([source[i]["image"] for i in range(11)])
  z_q, res = tok.quantize(images)
  recon = np.clip(np.asarray(tok.decode(z_q)), 0, 1)
  direct = ReconstructionMetrics().update(images, recon).compute()
  for k, v in direct.items():
    np.testing.assert_allclose(result[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  apply = lambda x: jax.device_get(inception[0].apply(inception[1], (np.clip(x, 0, 1) * 255).astype(np.uint8)))
  real, fake = apply(images), apply(recon)
  fid = fid_from_stats(FeatureStats().update(real["2048"]), FeatureStats().update(fake["2048"]))
  # float32 Inception features differ by ~1e-6 between batch shapes; 11 samples in 2048-d make FID
  # ill-conditioned, so the comparison allows 1e-4 relative
  np.testing.assert_allclose(result["rFID"], fid, rtol=1e-4)
  usage = CodebookStats(tok.codebook_size).update(np.asarray(res["min_encoding_indices"])).usage()
  assert result["CodebookUsage"] == pytest.approx(usage)


def test_tokenizer_cli_with_lpips(tmp_path, golden, fixture_configs, weights):
  heads, vgg = _lpips_files(weights)
  cfg = tmp_path / "c.py"
  cfg.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, 'tokenizer_tiny')!r}\n")
  out = tmp_path / "r.json"
  rc = evaluate_main(["tokenizer", "--config", str(cfg), "--checkpoint", str(golden / "tokenizer_tiny.bin"),
                      "--data", "synthetic:8", "--size", "32", "--batch_size", "8", "--skip", "fid",
                      "--lpips", str(heads), "--vgg16", str(vgg), "--out", str(out)])
  assert rc == 0
  result = json.loads(out.read_text())
  assert result["complete"] and result["num_images"] == 8 and result["LPIPS"] > 0
  assert {"MAE", "MSE", "PSNR", "SSIM", "CodebookUsage", "CodebookEntropy"} <= set(result)


def test_missing_weight_files_are_named(tmp_path, fixture_configs):
  cfg = tmp_path / "c.py"
  cfg.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, 'tokenizer_tiny')!r}\n")
  with pytest.raises(SystemExit, match="--inception is required"):
    evaluate_main(["tokenizer", "--config", str(cfg), "--random_init", "--skip", "lpips"])
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    evaluate_main(["tokenizer", "--config", str(cfg), "--random_init", "--skip", "lpips",
                   "--inception", str(tmp_path / "nope.pth")])
  with pytest.raises(SystemExit):  # a misspelt group is named, not ignored
    evaluate_main(["tokenizer", "--config", str(cfg), "--random_init", "--skip", "fid,lpip"])


def test_generator_cli_writes_adm_samples(tmp_path, weights):
  stats = tmp_path / "ref.npz"
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(64, 2048))
  save_reference_stats(stats, FeatureStats().update(feats))
  out, samples = tmp_path / "g.json", tmp_path / "samples.npz"
  rc = evaluate_main(["generator", "--config", str(REPO / "configs/generator_tiny.py"), "--random_init",
                      "--num_images", "10", "--batch_size", "8", "--num_steps", "2",
                      "--inception", str(weights[0] / "inception.safetensors"), "--ref_stats", str(stats),
                      "--samples_npz", str(samples), "--out", str(out)])
  assert rc == 0
  result = json.loads(out.read_text())
  assert result["complete"] and result["num_images"] == 10 and np.isfinite(result["FID"])
  with np.load(samples) as data:
    size = maskbit_jax.load_config(str(REPO / "configs/generator_tiny.py")).dataset.preprocessing.resolution
    assert data["arr_0"].shape == (10, size, size, 3) and data["arr_0"].dtype == np.uint8
  bad = tmp_path / "bad.npz"
  np.savez(bad, mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(ValueError):
    evaluate_main(["generator", "--config", str(REPO / "configs/generator_tiny.py"), "--random_init",
                   "--num_images", "4", "--batch_size", "8", "--inception", str(weights[0] / "inception.safetensors"),
                   "--ref_stats", str(bad)])
