"""Streaming evaluation metrics against the reference evaluators (``metrics.npz``): ``evaluation/`` ``fid``,
``inception_score``, ``reconstruction``, ``codebook``, ``accumulator`` (multi-host merge) and ``adm_samples``.

Every value comes from ``metrics.npz`` (README section 6): the reference
``TokenizerEvaluator`` (rFID, IS, MAE, MSE, PSNR, SSIM, codebook usage/entropy)
and the ADM suite (``frechet_distance`` with ``np.cov``, split Inception Score).
Tolerances: FID 1e-6 relative (achieved: ~1e-9 on the singular 64-sample case,
~1e-14 on the regenerated well-conditioned one), IS and reconstruction metrics
1e-5 relative (achieved: <= 4e-7). LPIPS is tested with the LPIPS network.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_npz, nhwc
from maskbit_jax.evaluation.accumulator import allgather_merge, process_local_rows
from maskbit_jax.evaluation.adm_samples import AdmSamplesWriter, images_to_uint8, write_adm_samples_npz
from maskbit_jax.evaluation.codebook import CodebookStats
from maskbit_jax.evaluation.fid import (FeatureStats, FeatureStatsMetric, adm_mean_cov, fid_from_stats,
                                        frechet_distance, load_reference_stats, save_reference_stats)
from maskbit_jax.evaluation.inception_score import InceptionScore, InceptionScoreSplits, softmax_float64
from maskbit_jax.evaluation.reconstruction import (ReconstructionMetrics, mae_per_image, mse_per_image, psnr_per_image,
                                                   reconstruction_metrics_per_image, ssim_per_image)

FID_RTOL = 1e-6
IS_RTOL = 1e-5
RECON_RTOL = 1e-5
RECON_NAMES = ("MAE", "MSE", "PSNR", "SSIM")


@pytest.fixture(scope="module")
def ref(golden) -> dict:
  return load_npz(golden / "metrics.npz")


@pytest.fixture(scope="module")
def scalars(golden) -> dict:
  return json.loads((golden / "scalars.json").read_text())


def _uneven_slices(n: int) -> list[slice]:
  """Batches of sizes 1, 2, 3, ... (the last one whatever is left), a split no real loader uses."""
  out, start, size = [], 0, 1
  while start < n:
    out.append(slice(start, min(n, start + size)))
    start += size
    size += 1
  return out


def _feature_stats(x, slices=None) -> FeatureStats:
  stats = FeatureStats()
  for sl in slices or [slice(None)]:
    stats.update(x[sl])
  return stats


# ----------------------------------------------------------------------------
# The fixture file itself.


def test_scalars_json_mirrors_npz(ref, scalars):
  names = [k for k, v in ref.items() if v.ndim == 0 and k in scalars]
  assert names
  for k in names:
    assert float(ref[k]) == scalars[k], k


# ----------------------------------------------------------------------------
# FID.


@pytest.fixture(scope="module")
def small_stats(ref):
  a, b = ref["fid_small_feats_a"], ref["fid_small_feats_b"]
  return _feature_stats(a, _uneven_slices(a.shape[0])), _feature_stats(b)


def test_fid_small_evaluator_path(ref, small_stats):
  # Per-sample float64 sums, (n - 1) covariance, scipy sqrtm: the rFID of TokenizerEvaluator.
  fid = fid_from_stats(*small_stats)
  np.testing.assert_allclose(fid, ref["fid_small_evaluator_rfid"], rtol=FID_RTOL)
  # The README: both reference paths agree to ~1e-9, so this one value matches both.
  np.testing.assert_allclose(fid, ref["fid_small_adm"], rtol=FID_RTOL)


def test_fid_small_adm_path(ref, small_stats):
  # np.mean / np.cov as ADM's compute_statistics: the same statistics as the streaming sums ...
  mu_a, sigma_a = adm_mean_cov(ref["fid_small_feats_a"])
  mu_b, sigma_b = adm_mean_cov(ref["fid_small_feats_b"])
  for (mu, sigma), stats in zip(((mu_a, sigma_a), (mu_b, sigma_b)), small_stats):
    s_mu, s_sigma = stats.mean_cov()
    np.testing.assert_allclose(s_mu, mu, rtol=0, atol=1e-12 * np.abs(mu).max())
    np.testing.assert_allclose(s_sigma, sigma, rtol=0, atol=1e-12 * np.abs(sigma).max())
  # ... and the ADM value (sqrtm on this path in the slow test; eigh here).
  fid = frechet_distance(mu_a, sigma_a, mu_b, sigma_b, method="eigh")
  np.testing.assert_allclose(fid, ref["fid_small_adm"], rtol=FID_RTOL)
  np.testing.assert_allclose(fid, ref["fid_small_evaluator_rfid"], rtol=FID_RTOL)


@pytest.fixture(scope="module")
def large_case(ref):
  seed_a, seed_b = (int(s) for s in ref["fid_large_seeds"])
  n = int(ref["fid_large_n"])
  a = np.random.RandomState(seed_a).standard_normal((n, ref["fid_large_mu_a"].shape[0]))
  b = np.random.RandomState(seed_b).standard_normal(a.shape) * 1.1 + 0.05
  half = n // 3
  stats_a = _feature_stats(a[:half]).merge(_feature_stats(a[half:]))
  return a, b, stats_a, _feature_stats(b)


def test_fid_large_regenerated(ref, large_case):
  a, _, stats_a, _ = large_case
  mu, sigma = stats_a.mean_cov()
  np.testing.assert_allclose(mu, ref["fid_large_mu_a"], rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.trace(sigma), ref["fid_large_trace_cov_a"], rtol=1e-12)
  np.testing.assert_allclose(np.trace(np.cov(a, rowvar=False)), ref["fid_large_trace_cov_a"], rtol=1e-12)


def test_fid_large_evaluator_path(ref, large_case):
  _, _, stats_a, stats_b = large_case
  fid = fid_from_stats(stats_a, stats_b)
  np.testing.assert_allclose(fid, ref["fid_large_evaluator_rfid"], rtol=FID_RTOL)
  np.testing.assert_allclose(fid, ref["fid_large_adm"], rtol=FID_RTOL)


def test_fid_large_adm_path(ref, large_case):
  a, b, _, _ = large_case
  fid = frechet_distance(*adm_mean_cov(a), *adm_mean_cov(b), method="eigh")
  np.testing.assert_allclose(fid, ref["fid_large_adm"], rtol=FID_RTOL)
  np.testing.assert_allclose(fid, ref["fid_large_evaluator_rfid"], rtol=FID_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["small", "large"])
def test_fid_adm_path_sqrtm(ref, case, request):
  if case == "small":
    a, b = ref["fid_small_feats_a"], ref["fid_small_feats_b"]
  else:
    a, b, _, _ = request.getfixturevalue("large_case")
  fid = frechet_distance(*adm_mean_cov(a), *adm_mean_cov(b))
  np.testing.assert_allclose(fid, ref[f"fid_{case}_adm"], rtol=FID_RTOL)
  np.testing.assert_allclose(fid, ref[f"fid_{case}_evaluator_rfid"], rtol=FID_RTOL)


def _fid_reorder_tolerance(a: np.ndarray, b: np.ndarray) -> float:
  """A float64 bound on how far two FIDs of the same features ``a``, ``b`` (``[n, d]``) may differ when only
  the order of the sums (batches, merges) or the algorithm (sqrtm, eigh; one- or two-pass covariance) differs.

  * The sums: n terms of ``x_i x_j`` (exact in float64 for float32 features) reordered move each by at most
    ~n u times the sum of their magnitudes, so every covariance element by ``delta = 4 n u m2``, m2 the largest
    second moment of a feature (the values' magnitude, mean included: the one-pass covariance cancels it).
  * Into the FID: ``tr`` moves by ``d delta`` per covariance and ``tr sqrt(Sa Sb)`` by at most
    ``d delta sqrt(lmax(Sb) / lmin(Sa)) / 2`` (and symmetrically), lmin / lmax the covariances' eigenvalues.
  * The root itself: a backward error ``d u lmax(Sa) lmax(Sb)`` in ``Sa Sb``, through ``1 / (2 sqrt(lmin))`` of
    the root and the eigenvector conditioning ``sqrt(kappa)`` of the non-normal product, in each of two runs.

  Each term is first order with a factor 2 to 4 for what first order leaves out; it grows with the conditioning
  of the data (a fixture set with nearly dependent features gets a larger one), never with luck.
  """
  n, d = a.shape
  u = np.finfo(np.float64).eps
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  m2 = max((a64 ** 2).mean(0).max(), (b64 ** 2).mean(0).max())
  lam_a = np.linalg.eigvalsh(np.cov(a64, rowvar=False))
  lam_b = np.linalg.eigvalsh(np.cov(b64, rowvar=False))
  lmin_a, lmin_b = lam_a.min(), lam_b.min()
  assert lmin_a > 0 and lmin_b > 0, "the slice must keep both covariances non-singular (d < n)"
  delta = 4 * n * u * m2
  sums = d * delta * (2 + np.sqrt(lam_b.max() / lmin_a) + np.sqrt(lam_a.max() / lmin_b))
  kappa = min(lam_a.max() / lmin_a, lam_b.max() / lmin_b)
  root = 2 * 4 * d * (d * u * lam_a.max() * lam_b.max()) / (2 * np.sqrt(lmin_a * lmin_b)) * np.sqrt(kappa)
  return float(sums + root)


def test_fid_streaming_equivalence(ref):
  # A slice of the golden features with fewer dimensions than samples keeps sqrtm cheap and the covariances
  # non-singular (their conditioning sets the tolerance).
  n = ref["fid_small_feats_a"].shape[0]
  d = min(48, n - 16)
  a = ref["fid_small_feats_a"][:, :d]
  b = ref["fid_small_feats_b"][:, :d]
  atol = _fid_reorder_tolerance(a, b)
  one_pass = fid_from_stats(_feature_stats(a), _feature_stats(b))
  halves = _feature_stats(a[: n // 2 + 3], _uneven_slices(n // 2 + 3)).merge(
      _feature_stats(a[n // 2 + 3:], _uneven_slices(n - n // 2 - 3)))
  assert halves.count == n
  streamed = fid_from_stats(halves, _feature_stats(b, _uneven_slices(n)))
  np.testing.assert_allclose(streamed, one_pass, rtol=0, atol=atol)
  # the bound is far below what a wrong accumulation gives: one row lost, or n in place of n - 1
  lost = _feature_stats(a[1:]).merge(_feature_stats(a[:1]).merge(_feature_stats(a[:1])))  # row 0 twice
  assert abs(fid_from_stats(lost, _feature_stats(b)) - one_pass) > 100 * atol
  mu, sigma = _feature_stats(a).mean_cov()
  assert abs(fid_from_stats((mu, sigma * (n - 1) / n), _feature_stats(b)) - one_pass) > 100 * atol
  # Padding rows masked out change nothing.
  padded = np.concatenate([a, np.full((5, a.shape[1]), 1e3, a.dtype)])
  mask = np.arange(padded.shape[0]) < n
  masked = FeatureStats().update(padded, mask=mask)
  np.testing.assert_allclose(fid_from_stats(masked, _feature_stats(b)), one_pass, rtol=0, atol=atol)
  # An empty accumulator merges as a no-op.
  np.testing.assert_allclose(fid_from_stats(FeatureStats().merge(halves), _feature_stats(b)), one_pass,
                             rtol=0, atol=atol)
  # The (mu, sigma) form (two-pass np.cov) and the eigh trace agree with the one-pass sqrtm one.
  np.testing.assert_allclose(fid_from_stats(adm_mean_cov(a), adm_mean_cov(b), method="eigh"), one_pass,
                             rtol=0, atol=atol)


def test_feature_stats_metric_on_device(ref):
  a = ref["fid_small_feats_a"][:, :48]
  b = ref["fid_small_feats_b"][:, :48]
  n = a.shape[0]
  from_output = jax.jit(FeatureStatsMetric.from_model_output)
  merge = jax.jit(lambda x, y: x.merge(y))
  metric = FeatureStatsMetric.empty()
  for sl in _uneven_slices(n):
    metric = merge(metric, from_output(jnp.asarray(a[sl])))
  assert int(metric.count) == n
  host = _feature_stats(a)
  mu, sigma = host.mean_cov()
  d_mu, d_sigma = metric.mean_cov()
  np.testing.assert_allclose(d_mu, mu, rtol=0, atol=1e-6 * np.abs(mu).max())
  np.testing.assert_allclose(d_sigma, sigma, rtol=0, atol=1e-6 * np.abs(sigma).max())
  one_pass = fid_from_stats(host, _feature_stats(b))
  np.testing.assert_allclose(fid_from_stats(metric, _feature_stats(b)), one_pass, rtol=1e-5)
  np.testing.assert_allclose(fid_from_stats(metric.to_feature_stats(), _feature_stats(b)), one_pass, rtol=1e-5)
  # clu's reduce over a stacked (device) axis, with a mask on the padded rows.
  stacked = jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs),
      *[FeatureStatsMetric.from_model_output(jnp.asarray(a[i:i + 16]), mask=jnp.ones((16,), bool))
        for i in range(0, n, 16)])
  reduced = stacked.reduce()
  np.testing.assert_allclose(reduced.mean_cov()[1], sigma, rtol=0, atol=1e-6 * np.abs(sigma).max())
  padded = jnp.concatenate([jnp.asarray(a), jnp.full((3, a.shape[1]), 50.0)])
  masked = FeatureStatsMetric.from_model_output(padded, mask=jnp.arange(n + 3) < n)
  assert int(masked.count) == n
  np.testing.assert_allclose(masked.mean_cov()[1], sigma, rtol=0, atol=1e-6 * np.abs(sigma).max())


# ----------------------------------------------------------------------------
# Inception Score.


def _adm_inception_score(probs: np.ndarray, split_size: int) -> float:
  """The ADM suite's loop, written out directly (float64)."""
  scores = []
  for i in range(0, len(probs), split_size):
    part = probs[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores))


def test_inception_score_golden(ref):
  logits = ref["is_logits"]
  slices = _uneven_slices(logits.shape[0])
  evaluator = InceptionScore()
  for sl in slices:
    evaluator.update(logits[sl])
  np.testing.assert_allclose(evaluator.compute(), ref["is_evaluator"], rtol=IS_RTOL)
  # ADM: 5000-sample splits, so the golden batch is one split.
  adm = InceptionScoreSplits()
  for sl in slices:
    adm.update_probs(softmax_float64(logits[sl]))
  np.testing.assert_allclose(adm.compute(), ref["is_adm_from_softmax_probs"], rtol=IS_RTOL)


def test_inception_score_streaming(ref):
  logits = ref["is_logits"]
  n = logits.shape[0]
  one_pass = InceptionScore().update(logits).compute()
  halves = InceptionScore().update(logits[:n // 3]).merge(InceptionScore().update(logits[n // 3:]))
  np.testing.assert_allclose(halves.compute(), one_pass, rtol=1e-12)
  padded = np.concatenate([logits, logits[:4] * 3.0])
  masked = InceptionScore().update(padded, mask=np.arange(n + 4) < n)
  np.testing.assert_allclose(masked.compute(), one_pass, rtol=1e-12)

  # Several ADM splits, with batches that straddle the split boundaries.
  split = max(2, n // 3 - 1)
  probs = softmax_float64(logits)
  expected = _adm_inception_score(probs, split)
  streamed = InceptionScoreSplits(split)
  for sl in _uneven_slices(n):
    streamed.update(logits[sl])
  assert list(streamed.split_counts) == [len(range(n)[i:i + split]) for i in range(0, n, split)]
  np.testing.assert_allclose(streamed.compute(), expected, rtol=1e-12)
  # Merging after a whole number of splits is the same as one stream.
  cut = 2 * split
  merged = InceptionScoreSplits(split).update(logits[:cut]).merge(InceptionScoreSplits(split).update(logits[cut:]))
  np.testing.assert_allclose(merged.compute(), expected, rtol=1e-12)


# ----------------------------------------------------------------------------
# Reconstruction metrics and codebook use.


@pytest.fixture(scope="module")
def recon_images(ref):
  return nhwc(ref["recon_real"]), nhwc(ref["recon_fake"])


def test_reconstruction_metrics_golden(ref, recon_images):
  real, fake = recon_images
  result = ReconstructionMetrics().update(real, fake).compute()
  for name in RECON_NAMES:
    np.testing.assert_allclose(result[name], ref[f"recon_{name}"], rtol=RECON_RTOL, err_msg=name)


def test_reconstruction_functions(ref, recon_images):
  real, fake = (jnp.asarray(x) for x in recon_images)
  funcs = {"MAE": mae_per_image, "MSE": mse_per_image, "PSNR": psnr_per_image, "SSIM": ssim_per_image}
  jitted = reconstruction_metrics_per_image(real, fake)
  for name, fn in funcs.items():
    per_image = fn(real, fake)
    assert per_image.shape == (real.shape[0],)
    np.testing.assert_allclose(np.mean(np.asarray(per_image, np.float64)), ref[f"recon_{name}"], rtol=RECON_RTOL)
    np.testing.assert_allclose(jitted[name], per_image, rtol=1e-6)
  # PSNR is the mean of per-image PSNRs (the reference's order), not the PSNR of the mean MSE.
  mse = np.asarray(funcs["MSE"](real, fake), np.float64)
  np.testing.assert_allclose(np.mean(10 * np.log10(1 / (mse + 1e-10))), ref["recon_PSNR"], rtol=RECON_RTOL)
  # Identical images: SSIM 1, MAE 0.
  np.testing.assert_allclose(ssim_per_image(real, real), 1.0, rtol=1e-6)
  np.testing.assert_allclose(mae_per_image(real, real), 0.0, atol=0)


def test_reconstruction_streaming(recon_images):
  real, fake = recon_images
  b = real.shape[0]
  one_pass = ReconstructionMetrics().update(real, fake).compute()
  first = ReconstructionMetrics()
  for sl in _uneven_slices(b // 2):
    first.update(real[sl], fake[sl])
  second = ReconstructionMetrics().update(real[b // 2:], fake[b // 2:])
  merged = first.merge(second).compute()
  for name in RECON_NAMES:
    np.testing.assert_allclose(merged[name], one_pass[name], rtol=1e-6, err_msg=name)
  # A padded batch (padding images = noise) with its mask.
  pad_real = np.concatenate([real, np.zeros_like(real[:1])])
  pad_fake = np.concatenate([fake, np.ones_like(fake[:1])])
  masked = ReconstructionMetrics().update(pad_real, pad_fake, mask=np.arange(b + 1) < b).compute()
  for name in RECON_NAMES:
    np.testing.assert_allclose(masked[name], one_pass[name], rtol=1e-6, err_msg=name)
  # Extra per-image values (e.g. LPIPS from elsewhere) ride along.
  with_extra = ReconstructionMetrics(RECON_NAMES + ("LPIPS",)).update(
      real, fake, extra_per_image={"LPIPS": np.arange(b, dtype=np.float32)}).compute()
  assert with_extra["LPIPS"] == pytest.approx(np.mean(np.arange(b)))


def _codebook_size(ref) -> int:
  """The codebook size behind the golden usage: distinct indices / usage (README: 64 entries)."""
  indices = ref["recon_codebook_indices"]
  used = len(np.unique(indices))
  size = used / float(ref["recon_CodebookUsage"])
  assert size == round(size) and round(size) > indices.max(), size
  return int(round(size))


def test_codebook_metrics_golden(ref):
  indices = ref["recon_codebook_indices"]
  size = _codebook_size(ref)
  stats = CodebookStats(size)
  for sl in _uneven_slices(indices.shape[0]):
    stats.update(indices[sl])
  result = stats.compute()
  np.testing.assert_allclose(result["CodebookUsage"], ref["recon_CodebookUsage"], rtol=RECON_RTOL)
  np.testing.assert_allclose(result["CodebookEntropy"], ref["recon_CodebookEntropy"], rtol=RECON_RTOL)
  # The entropy does not depend on the codebook size (unused entries add 0).
  np.testing.assert_allclose(CodebookStats(4 * size).update(indices).entropy(), ref["recon_CodebookEntropy"],
                             rtol=RECON_RTOL)
  # Merging halves; masking images.
  b = indices.shape[0]
  merged = CodebookStats(size).update(indices[:1]).merge(CodebookStats(size).update(indices[1:]))
  np.testing.assert_array_equal(merged.counts, stats.counts)
  masked = CodebookStats(size).update(np.concatenate([indices, np.zeros_like(indices[:2])]),
                                      mask=np.arange(b + 2) < b)
  np.testing.assert_array_equal(masked.counts, stats.counts)


# ----------------------------------------------------------------------------
# Multi-host merge (one process here: the result must equal the input, not double it).


def test_allgather_merge_single_process(ref, recon_images):
  logits = ref["is_logits"]
  real, fake = recon_images
  feats = FeatureStats().update(ref["fid_small_feats_a"][:, :32])
  accs = [
      feats,
      FeatureStats(),  # never updated: unknown dimension, empty arrays
      InceptionScore().update(logits),
      InceptionScoreSplits(10).update(logits),
      ReconstructionMetrics().update(real, fake),
      CodebookStats(_codebook_size(ref)).update(ref["recon_codebook_indices"]),
  ]
  for acc in accs:
    merged = allgather_merge(acc)
    assert type(merged) is type(acc)
    state, merged_state = acc.state_dict(), merged.state_dict()
    assert list(state) == list(merged_state)
    for k in state:
      assert merged_state[k].dtype == np.asarray(state[k]).dtype, k
      np.testing.assert_array_equal(merged_state[k], state[k], err_msg=k)  # bit-exact, float64 kept
  assert allgather_merge(feats).count == feats.count


def test_process_local_rows_single_process():
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  x = np.arange(jax.device_count() * 2 * 3, dtype=np.float32).reshape(-1, 3)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  np.testing.assert_array_equal(process_local_rows(sharded), x)
  np.testing.assert_array_equal(FeatureStats().update(sharded).total, x.astype(np.float64).sum(0))


# ----------------------------------------------------------------------------
# Reference statistics and sample files.


def test_reference_stats_roundtrip(tmp_path, small_stats):
  path = tmp_path / "ref_stats.npz"
  save_reference_stats(path, small_stats[0])
  mu, sigma = load_reference_stats(path, expected_dim=small_stats[0].dim)
  e_mu, e_sigma = small_stats[0].mean_cov()
  np.testing.assert_array_equal(mu, e_mu)
  np.testing.assert_array_equal(sigma, e_sigma)
  save_reference_stats(tmp_path / "explicit.npz", mu[:3], sigma[:3, :3])
  assert load_reference_stats(tmp_path / "explicit.npz")[1].shape == (3, 3)
  with pytest.raises(ValueError, match="expected 7"):
    load_reference_stats(path, expected_dim=7)


def test_reference_stats_errors(tmp_path):
  samples = tmp_path / "samples.npz"
  np.savez(samples, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="'mu' and 'sigma'.*arr_0"):
    load_reference_stats(samples)
  only_mu = tmp_path / "only_mu.npz"
  np.savez(only_mu, mu=np.zeros(4))
  with pytest.raises(ValueError, match=r"missing \['sigma'\]"):
    load_reference_stats(only_mu)
  bad_sigma = tmp_path / "bad_sigma.npz"
  np.savez(bad_sigma, mu=np.zeros(4), sigma=np.eye(3))
  with pytest.raises(ValueError, match="'sigma' must be"):
    load_reference_stats(bad_sigma)
  bad_mu = tmp_path / "bad_mu.npz"
  np.savez(bad_mu, mu=np.zeros((2, 2)), sigma=np.eye(2))
  with pytest.raises(ValueError, match="'mu' must be 1-D"):
    load_reference_stats(bad_mu)


def test_adm_samples_npz(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, size=(5, 8, 6, 3)).astype(np.uint8)
  path = tmp_path / "samples.npz"
  write_adm_samples_npz(path, images)
  with np.load(path) as data:
    assert data.files == ["arr_0"]
    np.testing.assert_array_equal(data["arr_0"], images)
  streamed = tmp_path / "streamed.npz"
  with AdmSamplesWriter(streamed, num_images=5, height=8, width=6) as writer:
    writer.write(images[:2])
    writer.write(images[2:])
  with np.load(streamed) as data:
    np.testing.assert_array_equal(data["arr_0"], images)
  short = tmp_path / "short.npz"
  with pytest.raises(ValueError, match="2 images written, 5 declared"):
    with AdmSamplesWriter(short, num_images=5, height=8, width=6) as writer:
      writer.write(images[:2])
  assert not short.exists()
  with pytest.raises(ValueError, match="uint8"):
    write_adm_samples_npz(tmp_path / "f.npz", images.astype(np.float32))
  with pytest.raises(ValueError, match="NCHW"):
    write_adm_samples_npz(tmp_path / "nchw.npz", np.transpose(images, (0, 3, 1, 2)))
  # The reference's float -> uint8: clamp, x255, truncate.
  np.testing.assert_array_equal(images_to_uint8(np.array([-0.1, 0.0, 0.5, 0.999, 1.2])), [0, 0, 127, 254, 255])


# ----------------------------------------------------------------------------
# Bad inputs.


def test_bad_images(recon_images):
  real, fake = recon_images
  acc = ReconstructionMetrics()
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    acc.update(real * 255.0, fake * 255.0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    acc.update(real * 2.0 - 1.0, fake)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    ssim_per_image(jnp.asarray(real), jnp.asarray(fake) + 1.0)
  with pytest.raises(ValueError, match="NCHW"):
    acc.update(np.transpose(real, (0, 3, 1, 2)), np.transpose(fake, (0, 3, 1, 2)))
  with pytest.raises(ValueError, match="NHWC"):
    mse_per_image(real[0], fake[0])
  with pytest.raises(ValueError, match="differ in shape"):
    acc.update(real, fake[:, :-1])
  with pytest.raises(ValueError, match="NaN"):
    acc.update(real, np.full_like(fake, np.nan))
  with pytest.raises(ValueError, match="H and W"):
    ssim_per_image(real[:, :4, :4], fake[:, :4, :4])
  with pytest.raises(ValueError, match="mask"):
    acc.update(real, fake, mask=np.ones((real.shape[0] + 1,), bool))
  assert acc.count == 0  # nothing was counted by the failed updates
  with pytest.raises(ValueError, match="no images"):
    acc.compute()


def test_bad_features(ref):
  a = ref["fid_small_feats_a"]
  with pytest.raises(ValueError, match="at least 2 samples"):
    FeatureStats().update(a[:1]).mean_cov()
  with pytest.raises(ValueError, match="at least 2 samples"):
    fid_from_stats(FeatureStats().update(a[:1]), FeatureStats().update(a))
  with pytest.raises(ValueError, match="at least 2 samples"):
    FeatureStatsMetric.from_model_output(jnp.asarray(a[:1])).mean_cov()
  stats = FeatureStats().update(a[:4, :8])
  with pytest.raises(ValueError, match="does not match"):
    stats.update(a[:4, :9])
  with pytest.raises(ValueError, match="dimension"):
    stats.merge(FeatureStats().update(a[:4, :9]))
  with pytest.raises(ValueError, match=r"\[B, D\]"):
    stats.update(a[0, :8])
  with pytest.raises(ValueError, match="NaN"):
    FeatureStats().update(np.full((2, 8), np.nan))
  mu, sigma = np.zeros(8), np.eye(8)
  with pytest.raises(ValueError, match="equal length"):
    frechet_distance(mu, sigma, np.zeros(9), np.eye(9))
  with pytest.raises(ValueError, match="covariances"):
    frechet_distance(mu, sigma, mu, np.eye(9))
  with pytest.raises(ValueError, match="method"):
    frechet_distance(mu, sigma, mu, sigma, method="svd")
  with pytest.raises(TypeError):
    stats.merge(InceptionScore())
  assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-12)


def test_bad_logits_and_indices(ref):
  logits = ref["is_logits"]
  score = InceptionScore().update(logits)
  with pytest.raises(ValueError, match="classes"):
    score.update(logits[:, :-1])
  with pytest.raises(ValueError, match=r"\[B, C\]"):
    score.update(logits[0])
  with pytest.raises(ValueError, match="NaN"):
    InceptionScore().update(np.full((2, 5), np.nan))
  with pytest.raises(ValueError, match="non-negative"):
    InceptionScore().update_probs(-np.ones((2, 5)))
  with pytest.raises(ValueError, match="no samples"):
    InceptionScore().compute()
  with pytest.raises(ValueError, match="split sizes"):
    InceptionScoreSplits(10).merge(InceptionScoreSplits(20))
  size = _codebook_size(ref)
  with pytest.raises(ValueError, match=r"\[0, "):
    CodebookStats(size).update(np.array([[0, size]]))
  with pytest.raises(ValueError, match=r"\[0, "):
    CodebookStats(size).update(np.array([[-1, 0]]))
  with pytest.raises(ValueError, match="integers"):
    CodebookStats(size).update(np.array([[0.0, 1.0]]))
  with pytest.raises(ValueError, match="entries"):
    CodebookStats(size).merge(CodebookStats(size + 1))
  assert math.isfinite(score.compute())
