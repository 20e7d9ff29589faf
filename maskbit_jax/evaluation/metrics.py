"""Streaming evaluation metrics: FID, Inception Score, PSNR/SSIM/MAE/MSE, codebook use.

Everything here accumulates running sums over batches (and over hosts), so no
metric ever needs all images or all features at once. The numbers follow the
reference MaskBit evaluators:

* ``TokenizerEvaluator`` / ``GeneratorEvaluator`` (``evaluator/evaluator.py``):
  rFID from per-sample float64 sums and the (n - 1) covariance, Inception Score
  over ONE split of all samples, per-image MAE/MSE/PSNR/SSIM averaged over
  images, codebook usage and entropy of the token histogram.
* The ADM suite (``utils/adm_eval_suite.py``) used for the generator tables:
  ``FIDStatistics.frechet_distance`` (scipy ``sqrtm``, an ``eps`` offset when
  the product is singular, imaginary parts dropped when small), Inception Score
  over consecutive splits of 5000 samples, and its ``.npz`` formats (reference
  statistics under ``mu``/``sigma``; sample batches as uint8 NHWC ``arr_0``).

Layout: images are NHWC in [0, 1]; features ``[B, D]``; Inception logits
``[B, C]``; token indices any shape with the batch first.

Accumulators (``FeatureStats``, ``InceptionScore``, ``InceptionScoreSplits``,
``ReconstructionMetrics``, ``CodebookStats``) live on the host in float64 /
int64: each batch's per-image values or features come off the device (a few
kB, or ``B x 2048`` floats) and are added there. ``update`` adds a batch in
place (and returns the accumulator), ``merge`` returns a new accumulator with
both inputs' samples, and ``allgather_merge`` combines one accumulator per
process. Every ``update`` takes an optional boolean ``mask`` ``[B]`` so that the
padding images of the last, padded batch are not counted. Inputs may be numpy
arrays, process-local ``jax.Array``s, or global ones sharded along the batch
(each process then adds only the rows it owns, see ``process_local_rows``), so
that ``allgather_merge`` counts every sample exactly once.

``FeatureStatsMetric`` is the on-device alternative (a ``clu.metrics.Metric``),
for use inside a jitted eval step; see its docstring for its precision.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils
from scipy import linalg

from maskbit_jax import paths

# Reference constants.
FID_EPS = 1e-6             # ADM: added to both covariance diagonals when the product is singular.
IS_EPS = 1e-16             # reference evaluator: log(p + eps) and log(mean p + eps).
ADM_IS_SPLIT_SIZE = 5000   # ADM ``compute_inception_score(split_size=5000)``.
PSNR_EPS = 1e-10           # reference: 10 log10(range^2 / (mse + 1e-10)).
CODEBOOK_ENTROPY_EPS = 1e-8  # reference: -sum p log2(p + 1e-8).
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Images handed to [0, 1] metrics must lie in this range (decoded images are not
# clamped and may overshoot [0, 1] a little; anything further out is a wrong range,
# e.g. [-1, 1] or [0, 255] images).
IMAGE_RANGE_LIMITS = (-0.5, 1.5)


# ----------------------------------------------------------------------------
# Input checks.


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_images_nhwc(x, name: str) -> None:
  """Shape (always) and value-range (when concrete) checks for NHWC [0, 1] images."""
  shape = tuple(np.shape(x))
  if len(shape) != 4:
    raise ValueError(f"{name}: expected NHWC images [B, H, W, C], got shape {shape}")
  if shape[-1] not in (1, 3):
    hint = " (it looks like NCHW: transpose to NHWC)" if shape[1] in (1, 3) else ""
    raise ValueError(f"{name}: expected 1 or 3 channels last (NHWC), got shape {shape}{hint}")
  if _is_concrete(x) and np.size(x):
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
      raise ValueError(f"{name}: expected float images in [0, 1], got dtype {x.dtype}")
    if isinstance(x, jax.Array):  # also for arrays spread over several processes
      lo, hi = float(jnp.min(x)), float(jnp.max(x))
    else:
      lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
      raise ValueError(f"{name}: images contain NaN or inf")
    if lo < IMAGE_RANGE_LIMITS[0] or hi > IMAGE_RANGE_LIMITS[1]:
      raise ValueError(f"{name}: images must be in [0, 1] (values in {list(IMAGE_RANGE_LIMITS)} tolerated), "
                       f"got range [{lo:.4g}, {hi:.4g}]")


def _check_image_pair(real, fake) -> None:
  _check_images_nhwc(real, "real")
  _check_images_nhwc(fake, "fake")
  if tuple(np.shape(real)) != tuple(np.shape(fake)):
    raise ValueError(f"real and fake images differ in shape: {np.shape(real)} vs {np.shape(fake)}")


def process_local_rows(x) -> np.ndarray:
  """This process's rows of a batch as a numpy array, each row owned by exactly one process.

  Numpy inputs and process-local ``jax.Array``s are returned whole. For a global
  ``jax.Array`` spread over several processes, the rows held by this process's
  devices are returned, and a block of rows held by several processes (replicated)
  is kept only by the lowest process index holding it, so that accumulating every
  process's rows and ``allgather_merge`` count each sample once. Only the batch
  (first) axis may be sharded.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)

  def bounds(index) -> tuple[int, int]:
    for axis, sl in enumerate(index[1:], start=1):
      if sl.indices(x.shape[axis])[:2] != (0, x.shape[axis]):
        raise ValueError(f"only the batch axis may be sharded across processes, got sharding {x.sharding}")
    start, stop, _ = index[0].indices(x.shape[0])
    return start, stop

  owner: dict[tuple[int, int], int] = {}
  for device, index in x.sharding.devices_indices_map(x.shape).items():
    key = bounds(index)
    owner[key] = min(owner.get(key, device.process_index), device.process_index)
  mine = sorted(k for k, p in owner.items() if p == jax.process_index())
  blocks: dict[tuple[int, int], np.ndarray] = {}
  for shard in x.addressable_shards:
    key = bounds(shard.index)
    if key in mine and key not in blocks:
      blocks[key] = np.asarray(shard.data)
  if not mine:
    return np.zeros((0,) + tuple(x.shape[1:]), x.dtype)
  return np.concatenate([blocks[k] for k in mine], axis=0)


def _batch_mask(mask, batch: int) -> np.ndarray | None:
  if mask is None:
    return None
  mask = process_local_rows(mask)
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape [{batch}] (one flag per image), got {mask.shape}")
  return mask.astype(bool)


# ----------------------------------------------------------------------------
# Frechet distance.


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
  # Same result as the references' ``sqrtm(..., disp=False)[0]``; ``disp`` is deprecated
  # in scipy 1.17 and only adds a residual computation. Singular-matrix warnings are
  # expected for fewer samples than dimensions.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    out = linalg.sqrtm(matrix)
  return out[0] if isinstance(out, tuple) else out


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr(sqrtm(sigma1 sigma2)) for symmetric PSD inputs via two ``eigh`` (no Schur form).

  sigma1 sigma2 is similar to S sigma2 S with S = sigma1^(1/2), which is symmetric
  PSD, so the trace is the sum of the square roots of its eigenvalues.
  """
  w, v = linalg.eigh(sigma1, driver="evr")
  root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  lam = linalg.eigh(root @ sigma2 @ root, eigvals_only=True)
  return float(np.sum(np.sqrt(np.clip(lam, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = FID_EPS, method: str = "sqrtm") -> float:
  """Frechet distance between two Gaussians, as the ADM suite computes it (float64).

  ``method="sqrtm"`` (default) is the ADM formula: ``covmean = sqrtm(sigma1 @ sigma2)``
  with scipy; if that is not finite, ``eps`` is added to both diagonals and the root
  taken again; an imaginary part is dropped if the diagonal's imaginary part is within
  1e-3 of 0, else ``ValueError``. ``method="eigh"`` computes the same trace from two
  symmetric eigen-decompositions instead of a complex Schur form (at D = 2048 on two
  CPU cores about 2 s instead of 13 to 16 s; equal within ~1e-7 relative on the golden
  singular case, ~1e-14 on the well-conditioned one).
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"mean vectors must be 1-D of equal length, got {mu1.shape} and {mu2.shape}")
  d = mu1.shape[0]
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"covariances must be [{d}, {d}] to match the means, got {sigma1.shape} and {sigma2.shape}")
  diff = mu1 - mu2
  if method == "sqrtm":
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
      warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
      offset = np.eye(d) * eps
      covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
      if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
      covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
  elif method == "eigh":
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  else:
    raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _as_mean_cov(stats) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(stats, (FeatureStats, FeatureStatsMetric)):
    return stats.mean_cov()
  if isinstance(stats, (tuple, list)) and len(stats) == 2:
    return np.asarray(stats[0], np.float64), np.asarray(stats[1], np.float64)
  raise TypeError(f"expected FeatureStats, FeatureStatsMetric or a (mu, sigma) pair, got {type(stats).__name__}")


def fid_from_stats(stats_a, stats_b, **kwargs) -> float:
  """FID between two statistics, each a ``FeatureStats``, ``FeatureStatsMetric`` or ``(mu, sigma)``.

  ``kwargs`` go to ``frechet_distance`` (``eps``, ``method``).
  """
  mu_a, sigma_a = _as_mean_cov(stats_a)
  mu_b, sigma_b = _as_mean_cov(stats_b)
  return frechet_distance(mu_a, sigma_a, mu_b, sigma_b, **kwargs)


def adm_mean_cov(features) -> tuple[np.ndarray, np.ndarray]:
  """The ADM suite's one-shot statistics of a feature array ``[N, D]``: ``np.mean`` and ``np.cov``."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"need features [N >= 2, D], got shape {f.shape}")
  return np.mean(f, axis=0), np.cov(f, rowvar=False)


# ----------------------------------------------------------------------------
# Host accumulators.


class _Accumulator:
  """State as named numpy arrays, so that ``allgather_merge`` can move any accumulator."""

  def state_dict(self) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def with_state(self, state: Mapping[str, np.ndarray]):
    """A new accumulator with this one's settings and the given state."""
    raise NotImplementedError

  def merge(self, other):
    raise NotImplementedError

  def _check_same_kind(self, other) -> None:
    if type(other) is not type(self):
      raise TypeError(f"cannot merge {type(self).__name__} with {type(other).__name__}")


class FeatureStats(_Accumulator):
  """Running Gaussian statistics of features ``[B, D]``: count, float64 sum, float64 sum of outer products.

  As the reference ``TokenizerEvaluator`` keeps them for rFID: the mean is
  ``sum / n`` and the covariance ``(sum_outer - sum sum^T / n) / (n - 1)``.
  Features arrive in float32 from the device and are summed in float64 here,
  so at most one rounding of each product enters the result. ``dim`` is taken
  from the first batch when not given.
  """

  def __init__(self, dim: int | None = None):
    self.dim = None if dim is None else int(dim)
    self.count = 0
    self.total = np.zeros((self.dim or 0,), np.float64)
    self.outer_sum = np.zeros((self.dim or 0, self.dim or 0), np.float64)

  def _set_dim(self, dim: int) -> None:
    if self.dim is None:
      self.dim = int(dim)
      self.total = np.zeros((dim,), np.float64)
      self.outer_sum = np.zeros((dim, dim), np.float64)
    elif dim != self.dim:
      raise ValueError(f"feature dimension {dim} does not match the accumulated dimension {self.dim}")

  def update(self, features, mask=None) -> FeatureStats:
    """Adds the features ``[B, D]`` of one batch (rows with ``mask == False`` skipped)."""
    f = process_local_rows(features)
    if f.ndim != 2:
      raise ValueError(f"features must be [B, D], got shape {f.shape}")
    m = _batch_mask(mask, f.shape[0])
    f = f.astype(np.float64)
    if m is not None:
      f = f[m]
    if not np.isfinite(f).all():
      raise ValueError("features contain NaN or inf")
    self._set_dim(f.shape[1])
    self.count += f.shape[0]
    self.total += f.sum(axis=0)
    self.outer_sum += f.T @ f
    return self

  def merge(self, other: FeatureStats) -> FeatureStats:
    self._check_same_kind(other)
    if self.dim is not None and other.dim is not None and self.dim != other.dim:
      raise ValueError(f"cannot merge feature statistics of dimension {self.dim} and {other.dim}")
    out = FeatureStats(self.dim if self.dim is not None else other.dim)
    out.count = self.count + other.count
    for part in (self, other):
      if part.dim is not None:
        out.total += part.total
        out.outer_sum += part.outer_sum
    return out

  @property
  def mean(self) -> np.ndarray:
    if self.count < 1:
      raise ValueError("no features accumulated")
    return self.total / self.count

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` in float64; needs at least 2 samples."""
    if self.count < 2:
      raise ValueError(f"the covariance needs at least 2 samples, got {self.count}")
    n = self.count
    mu = self.total / n
    sigma = (self.outer_sum - np.outer(self.total, self.total) / n) / (n - 1)
    return mu, sigma

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"count": np.asarray(self.count, np.int64), "total": self.total, "outer_sum": self.outer_sum}

  def with_state(self, state: Mapping[str, np.ndarray]) -> FeatureStats:
    total = np.asarray(state["total"], np.float64)
    out = FeatureStats(total.shape[0] or self.dim)
    if total.shape[0]:
      out.total = total.copy()
      out.outer_sum = np.asarray(state["outer_sum"], np.float64).copy()
    out.count = int(state["count"])
    return out


@flax.struct.dataclass
class FeatureStatsMetric(clu_metrics.Metric):
  """On-device feature statistics (``clu`` metric): count, mean and CENTRED sum of outer products.

  Usable inside ``jit`` (``from_model_output`` per batch, ``merge`` across batches,
  ``reduce`` across a stacked device axis). Without x64 the arrays are float32, and
  raw float32 sums of outer products would lose the covariance to cancellation
  (``sum_outer - n mu mu^T`` for features whose mean is comparable to their
  spread). So each batch is centred on its own mean and batches are combined with
  Chan et al.'s pairwise update (``m2 = m2_a + m2_b + delta delta^T n_a n_b / n``),
  whose error grows with the number of merges, not with the size of the mean.
  Measured against the float64 ``FeatureStats``: golden features (64 x 2048, four
  uneven batches) covariance 2e-7 and FID 2e-7 relative; 50,000 ReLU-like
  256-dim features in 200 batches, covariance 9e-7 and FID 1e-7 relative (raw
  float32 sums: 1.7e-6 on the covariance). For reported numbers prefer the host
  ``FeatureStats`` (exact float64 sums, as the reference); ``to_feature_stats()``
  converts this metric for merging across hosts in float64.
  """

  count: jax.Array  # int32 []
  mean: jax.Array   # [D]
  m2: jax.Array     # [D, D], sum over samples of (f - mean)(f - mean)^T

  @classmethod
  def empty(cls) -> FeatureStatsMetric:
    # Scalars broadcast against the first real batch in ``merge``.
    return cls(count=jnp.zeros((), jnp.int32), mean=jnp.zeros(()), m2=jnp.zeros(()))

  @classmethod
  def zeros(cls, dim: int, dtype=jnp.float32) -> FeatureStatsMetric:
    """An empty metric with fixed shapes (for a ``fori_loop``/``scan`` carry)."""
    return cls(count=jnp.zeros((), jnp.int32), mean=jnp.zeros((dim,), dtype), m2=jnp.zeros((dim, dim), dtype))

  @classmethod
  def from_model_output(cls, features: jax.Array, mask: jax.Array | None = None, **_) -> FeatureStatsMetric:
    if features.ndim != 2:
      raise ValueError(f"features must be [B, D], got shape {features.shape}")
    f = features.astype(jnp.promote_types(features.dtype, jnp.float32))
    w = jnp.ones((f.shape[0],), f.dtype) if mask is None else mask.astype(bool).astype(f.dtype)
    n = jnp.sum(w)
    mean = jnp.sum(f * w[:, None], axis=0) / jnp.maximum(n, 1.0)
    centred = (f - mean) * w[:, None]
    m2 = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST)
    return cls(count=n.astype(jnp.int32), mean=mean, m2=m2)

  def merge(self, other: FeatureStatsMetric) -> FeatureStatsMetric:
    dtype = jnp.result_type(self.mean, other.mean)
    n_a = self.count.astype(dtype)
    n_b = other.count.astype(dtype)
    n = jnp.maximum(n_a + n_b, 1.0)
    delta = other.mean - self.mean
    mean = self.mean + delta * (n_b / n)
    m2 = self.m2 + other.m2 + jnp.outer(delta, delta) * (n_a * n_b / n)
    return type(self)(count=self.count + other.count, mean=mean, m2=m2)

  def compute(self) -> tuple[jax.Array, jax.Array]:
    """``(mean, covariance)`` with the (n - 1) normalisation, in the metric's dtype."""
    return self.mean, self.m2 / jnp.maximum(self.count - 1, 1).astype(self.m2.dtype)

  def to_feature_stats(self) -> FeatureStats:
    """The host float64 ``FeatureStats`` with the same samples (for merging and reporting)."""
    n = int(self.count)
    mean = np.asarray(self.mean, np.float64)
    m2 = np.asarray(self.m2, np.float64)
    out = FeatureStats(mean.shape[0] if mean.ndim == 1 else None)
    if n and out.dim is not None:
      out.count = n
      out.total = n * mean
      out.outer_sum = m2 + n * np.outer(mean, mean)
    return out

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    n = int(self.count)
    if n < 2:
      raise ValueError(f"the covariance needs at least 2 samples, got {n}")
    return np.asarray(self.mean, np.float64), np.asarray(self.m2, np.float64) / (n - 1)


def softmax_float64(logits) -> np.ndarray:
  """Row softmax ``[B, C]`` in float64 on the host."""
  z = np.asarray(logits, np.float64)
  z = z - np.max(z, axis=-1, keepdims=True)
  e = np.exp(z)
  return e / np.sum(e, axis=-1, keepdims=True)


def _check_probs(probs) -> np.ndarray:
  p = process_local_rows(probs).astype(np.float64)
  if p.ndim != 2:
    raise ValueError(f"class probabilities must be [B, C], got shape {p.shape}")
  if not np.isfinite(p).all() or (p < 0).any():
    raise ValueError("class probabilities must be finite and non-negative")
  return p


def _check_logits(logits) -> np.ndarray:
  z = process_local_rows(logits)
  if z.ndim != 2:
    raise ValueError(f"logits must be [B, C], got shape {z.shape}")
  if not np.isfinite(z).all():
    raise ValueError("logits contain NaN or inf")
  return z


class InceptionScore(_Accumulator):
  """Inception Score as the reference evaluators compute it: ONE split over all samples.

  Keeps, per class, ``sum_i p_ic`` and ``sum_i p_ic log(p_ic + 1e-16)`` (float64);
  ``IS = exp((sum_c [plogp_c - P_c log(P_c / n + 1e-16)]) / n)`` with ``P_c`` the
  class sums. Exact under any batching and merging. ``update`` takes logits
  (softmax in float64 here); ``update_probs`` takes probabilities.
  """

  def __init__(self, num_classes: int | None = None):
    self.num_classes = None if num_classes is None else int(num_classes)
    self.count = 0
    self.prob_sum = np.zeros((self.num_classes or 0,), np.float64)
    self.plogp_sum = np.zeros((self.num_classes or 0,), np.float64)

  def _set_classes(self, c: int) -> None:
    if self.num_classes is None:
      self.num_classes = int(c)
      self.prob_sum = np.zeros((c,), np.float64)
      self.plogp_sum = np.zeros((c,), np.float64)
    elif c != self.num_classes:
      raise ValueError(f"number of classes {c} does not match the accumulated {self.num_classes}")

  def update(self, logits, mask=None) -> InceptionScore:
    z = _check_logits(logits)
    return self.update_probs(softmax_float64(z), mask)

  def update_probs(self, probs, mask=None) -> InceptionScore:
    p = _check_probs(probs)
    m = _batch_mask(mask, p.shape[0])
    if m is not None:
      p = p[m]
    self._set_classes(p.shape[1])
    self.count += p.shape[0]
    self.prob_sum += p.sum(axis=0)
    self.plogp_sum += (p * np.log(p + IS_EPS)).sum(axis=0)
    return self

  def merge(self, other: InceptionScore) -> InceptionScore:
    self._check_same_kind(other)
    if None not in (self.num_classes, other.num_classes) and self.num_classes != other.num_classes:
      raise ValueError(f"cannot merge Inception Scores over {self.num_classes} and {other.num_classes} classes")
    out = InceptionScore(self.num_classes if self.num_classes is not None else other.num_classes)
    out.count = self.count + other.count
    for part in (self, other):
      if part.num_classes is not None:
        out.prob_sum += part.prob_sum
        out.plogp_sum += part.plogp_sum
    return out

  def compute(self) -> float:
    if self.count < 1:
      raise ValueError("no samples accumulated")
    mean_probs = self.prob_sum / self.count
    excess = self.prob_sum * np.log(mean_probs + IS_EPS)
    return float(np.exp(np.sum(self.plogp_sum - excess) / self.count))

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"count": np.asarray(self.count, np.int64), "prob_sum": self.prob_sum, "plogp_sum": self.plogp_sum}

  def with_state(self, state: Mapping[str, np.ndarray]) -> InceptionScore:
    prob_sum = np.asarray(state["prob_sum"], np.float64)
    out = InceptionScore(prob_sum.shape[0] or self.num_classes)
    if prob_sum.shape[0]:
      out.prob_sum = prob_sum.copy()
      out.plogp_sum = np.asarray(state["plogp_sum"], np.float64).copy()
    out.count = int(state["count"])
    return out


class InceptionScoreSplits(_Accumulator):
  """Inception Score as the ADM suite computes it: mean over consecutive splits of ``split_size``.

  The samples, in the order they are added, are cut into splits of ``split_size``
  (the last one may be shorter); per split ``s`` the score is
  ``exp(mean_i sum_c p_ic (log p_ic - log pbar_sc))``, and the result is the mean of
  the split scores. Each split keeps its count, class sums and ``sum p log p``
  (float64), so memory is ``O(num_splits x C)``. ``0 log 0`` counts as 0 (ADM would
  give NaN for an exactly-zero probability).

  ``merge(other)`` concatenates the split lists (this one's, then ``other``'s), which
  equals ADM on the concatenated samples whenever this accumulator ends on a full
  split; otherwise its short last split stays short. (ADM's value depends on the
  sample order anyway; the reference scripts shuffle the class labels for that reason.)
  """

  def __init__(self, split_size: int = ADM_IS_SPLIT_SIZE, num_classes: int | None = None):
    if int(split_size) < 1:
      raise ValueError(f"split_size must be positive, got {split_size}")
    self.split_size = int(split_size)
    self.num_classes = None if num_classes is None else int(num_classes)
    self.split_counts = np.zeros((0,), np.int64)
    self.split_prob_sums = np.zeros((0, self.num_classes or 0), np.float64)
    self.split_plogp = np.zeros((0,), np.float64)

  @property
  def count(self) -> int:
    return int(self.split_counts.sum())

  def update(self, logits, mask=None) -> InceptionScoreSplits:
    z = _check_logits(logits)
    return self.update_probs(softmax_float64(z), mask)

  def update_probs(self, probs, mask=None) -> InceptionScoreSplits:
    p = _check_probs(probs)
    m = _batch_mask(mask, p.shape[0])
    if m is not None:
      p = p[m]
    if self.num_classes is None:
      self.num_classes = p.shape[1]
      self.split_prob_sums = np.zeros((0, self.num_classes), np.float64)
    elif p.shape[1] != self.num_classes:
      raise ValueError(f"number of classes {p.shape[1]} does not match the accumulated {self.num_classes}")
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
    start = 0
    while start < p.shape[0]:
      if not len(self.split_counts) or self.split_counts[-1] >= self.split_size:
        self.split_counts = np.append(self.split_counts, 0)
        self.split_prob_sums = np.concatenate([self.split_prob_sums, np.zeros((1, self.num_classes))])
        self.split_plogp = np.append(self.split_plogp, 0.0)
      take = min(self.split_size - int(self.split_counts[-1]), p.shape[0] - start)
      self.split_counts[-1] += take
      self.split_prob_sums[-1] += p[start:start + take].sum(axis=0)
      self.split_plogp[-1] += plogp[start:start + take].sum()
      start += take
    return self

  def merge(self, other: InceptionScoreSplits) -> InceptionScoreSplits:
    self._check_same_kind(other)
    if self.split_size != other.split_size:
      raise ValueError(f"cannot merge split sizes {self.split_size} and {other.split_size}")
    parts = [a for a in (self, other) if len(a.split_counts)]
    classes = {a.num_classes for a in parts}
    if len(classes) > 1:
      raise ValueError(f"cannot merge Inception Scores over {sorted(classes)} classes")
    out = InceptionScoreSplits(self.split_size, self.num_classes if self.num_classes is not None else other.num_classes)
    if parts:
      out.split_counts = np.concatenate([a.split_counts for a in parts])
      out.split_prob_sums = np.concatenate([a.split_prob_sums for a in parts])
      out.split_plogp = np.concatenate([a.split_plogp for a in parts])
    return out

  def compute(self) -> float:
    if not len(self.split_counts):
      raise ValueError("no samples accumulated")
    n = self.split_counts.astype(np.float64)
    s = self.split_prob_sums
    mean = s / n[:, None]
    s_log_mean = np.where(s > 0, s * np.log(np.where(mean > 0, mean, 1.0)), 0.0).sum(axis=1)
    kl = (self.split_plogp - s_log_mean) / n
    return float(np.mean(np.exp(kl)))

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"split_counts": self.split_counts, "split_prob_sums": self.split_prob_sums,
            "split_plogp": self.split_plogp}

  def with_state(self, state: Mapping[str, np.ndarray]) -> InceptionScoreSplits:
    sums = np.asarray(state["split_prob_sums"], np.float64)
    out = InceptionScoreSplits(self.split_size, sums.shape[1] if sums.shape[0] else self.num_classes)
    if sums.shape[0]:
      out.split_counts = np.asarray(state["split_counts"], np.int64).copy()
      out.split_prob_sums = sums.copy()
      out.split_plogp = np.asarray(state["split_plogp"], np.float64).copy()
    return out


# ----------------------------------------------------------------------------
# Reconstruction metrics: jnp per-image values, host sums.


def mae_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array) -> jax.Array:
  """Mean absolute error of each image ``[B]`` (NHWC, [0, 1])."""
  _check_image_pair(real_bhwc, fake_bhwc)
  return jnp.mean(jnp.abs(fake_bhwc - real_bhwc), axis=(1, 2, 3))


def mse_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array) -> jax.Array:
  """Mean squared error of each image ``[B]`` (NHWC, [0, 1])."""
  _check_image_pair(real_bhwc, fake_bhwc)
  return jnp.mean(jnp.square(fake_bhwc - real_bhwc), axis=(1, 2, 3))


def psnr_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array, data_range: float = 1.0) -> jax.Array:
  """PSNR of each image ``[B]``: ``10 log10(range^2 / (mse + 1e-10))`` (the reference's epsilon)."""
  mse = mse_per_image(real_bhwc, fake_bhwc)
  return 10.0 * jnp.log10(data_range**2 / (mse + PSNR_EPS))


@functools.lru_cache(maxsize=None)
def ssim_kernel(kernel_size: int = SSIM_KERNEL_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """The reference's normalised 2-D Gaussian window ``[k, k]``, built in float32 like it."""
  half = (kernel_size - 1) * 0.5
  x = np.linspace(-half, half, kernel_size, dtype=np.float32)
  g = np.exp(np.float32(-0.5) * np.square(x / np.float32(sigma)))
  g = g / g.sum()
  return np.outer(g, g)


def ssim_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array, *, data_range: float = 1.0,
                   kernel_size: int = SSIM_KERNEL_SIZE, sigma: float = SSIM_SIGMA,
                   k1: float = SSIM_K1, k2: float = SSIM_K2) -> jax.Array:
  """SSIM of each image ``[B]``, as the reference evaluator computes it.

  Gaussian window (11 x 11, sigma 1.5) applied per channel after REFLECT padding
  by ``(k - 1) / 2`` (so the SSIM map has the image size), ``C1 = (0.01 range)^2``,
  ``C2 = (0.03 range)^2``, variances as ``E[x^2] - E[x]^2``, and the map averaged
  over H, W and channels.
  """
  _check_image_pair(real_bhwc, fake_bhwc)
  if kernel_size % 2 != 1 or kernel_size < 1:
    raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
  pad = (kernel_size - 1) // 2
  b, h, w, c = real_bhwc.shape
  if min(h, w) <= pad:
    raise ValueError(f"SSIM with a {kernel_size}x{kernel_size} window needs H and W > {pad}, got {h}x{w}")
  kernel = jnp.asarray(ssim_kernel(kernel_size, float(sigma)))
  kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2

  x = fake_bhwc.astype(jnp.float32)
  y = real_bhwc.astype(jnp.float32)
  pad_cfg = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  x = jnp.pad(x, pad_cfg, mode="reflect")
  y = jnp.pad(y, pad_cfg, mode="reflect")
  stacked = jnp.concatenate([x, y, x * x, y * y, x * y], axis=0)
  filtered = jax.lax.conv_general_dilated(
      stacked, kernel, window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
      precision=jax.lax.Precision.HIGHEST)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(filtered, 5, axis=0)
  mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
  sigma_xx = e_xx - mu_xx
  sigma_yy = e_yy - mu_yy
  sigma_xy = e_xy - mu_xy
  ssim_map = ((2 * mu_xy + c1) * (2 * sigma_xy + c2)) / ((mu_xx + mu_yy + c1) * (sigma_xx + sigma_yy + c2))
  return jnp.mean(ssim_map, axis=(1, 2, 3))


RECONSTRUCTION_METRICS = ("MAE", "MSE", "PSNR", "SSIM")


@jax.jit
def _reconstruction_per_image(real_bhwc, fake_bhwc):
  return {
      "MAE": mae_per_image(real_bhwc, fake_bhwc),
      "MSE": mse_per_image(real_bhwc, fake_bhwc),
      "PSNR": psnr_per_image(real_bhwc, fake_bhwc),
      "SSIM": ssim_per_image(real_bhwc, fake_bhwc),
  }


def reconstruction_metrics_per_image(real_bhwc: jax.Array, fake_bhwc: jax.Array) -> dict[str, jax.Array]:
  """``{"MAE", "MSE", "PSNR", "SSIM"}`` -> per-image values ``[B]`` (jitted; inputs checked first)."""
  _check_image_pair(real_bhwc, fake_bhwc)
  return _reconstruction_per_image(real_bhwc, fake_bhwc)


class ReconstructionMetrics(_Accumulator):
  """Running float64 sums of per-image metrics; ``compute()`` gives their means over images.

  The reference evaluator also reduces each image to one number first (mean over
  C, H, W) and divides the sum over images by the number of images; PSNR is
  therefore the mean of per-image PSNRs, not the PSNR of the mean MSE. ``names``
  may add per-image values computed elsewhere (e.g. ``"LPIPS"``), handed to
  ``update(..., extra_per_image={"LPIPS": values})``.
  """

  def __init__(self, names: Sequence[str] = RECONSTRUCTION_METRICS):
    self.names = tuple(names)
    if len(set(self.names)) != len(self.names):
      raise ValueError(f"duplicate metric names {self.names}")
    self.count = 0
    self.sums = np.zeros((len(self.names),), np.float64)

  def update(self, real_bhwc, fake_bhwc, mask=None, extra_per_image: Mapping[str, Any] | None = None
             ) -> ReconstructionMetrics:
    """Adds one batch of real/fake NHWC [0, 1] images (the four built-in metrics on device)."""
    values = dict(extra_per_image or {})
    builtin = [n for n in self.names if n in RECONSTRUCTION_METRICS]
    if builtin:
      per_image = reconstruction_metrics_per_image(real_bhwc, fake_bhwc)
      values.update({n: per_image[n] for n in builtin})
    return self.update_per_image(values, mask)

  def update_per_image(self, values: Mapping[str, Any], mask=None) -> ReconstructionMetrics:
    """Adds per-image values ``{name: [B]}``; every name of this accumulator must be given."""
    missing = [n for n in self.names if n not in values]
    extra = [n for n in values if n not in self.names]
    if missing or extra:
      raise ValueError(f"per-image values must have exactly the names {self.names}; missing {missing}, unknown {extra}")
    arrays = [process_local_rows(values[n]).astype(np.float64).reshape(-1) for n in self.names]
    batch = arrays[0].shape[0]
    if any(a.shape[0] != batch for a in arrays):
      raise ValueError(f"per-image values differ in length: {[a.shape[0] for a in arrays]}")
    m = _batch_mask(mask, batch)
    if m is not None:
      arrays = [a[m] for a in arrays]
    for a, n in zip(arrays, self.names):
      if not np.isfinite(a).all():
        raise ValueError(f"{n}: per-image values contain NaN or inf")
    self.count += arrays[0].shape[0]
    self.sums += np.array([a.sum() for a in arrays])
    return self

  def merge(self, other: ReconstructionMetrics) -> ReconstructionMetrics:
    self._check_same_kind(other)
    if other.names != self.names:
      raise ValueError(f"cannot merge metrics {self.names} with {other.names}")
    out = ReconstructionMetrics(self.names)
    out.count = self.count + other.count
    out.sums = self.sums + other.sums
    return out

  def compute(self) -> dict[str, float]:
    if self.count < 1:
      raise ValueError("no images accumulated")
    return {n: float(s / self.count) for n, s in zip(self.names, self.sums)}

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"count": np.asarray(self.count, np.int64), "sums": self.sums}

  def with_state(self, state: Mapping[str, np.ndarray]) -> ReconstructionMetrics:
    out = ReconstructionMetrics(self.names)
    out.count = int(state["count"])
    out.sums = np.asarray(state["sums"], np.float64).copy()
    return out


class CodebookStats(_Accumulator):
  """Streaming histogram of token indices: codebook usage and entropy as the reference reports them.

  ``usage = #(entries used at least once) / num_entries``;
  ``entropy = -sum_k p_k log2(p_k + 1e-8)`` (bits) with ``p`` the frequencies over all
  accumulated tokens. ``num_entries`` is the tokenizer's codebook size (2^K for a
  K-bit lookup-free tokenizer).
  """

  def __init__(self, num_entries: int):
    if int(num_entries) < 1:
      raise ValueError(f"num_entries must be positive, got {num_entries}")
    self.num_entries = int(num_entries)
    self.counts = np.zeros((self.num_entries,), np.int64)

  def update(self, indices, mask=None) -> CodebookStats:
    """Adds token indices ``[B, ...]`` (images with ``mask == False`` skipped)."""
    idx = process_local_rows(indices)
    if not np.issubdtype(idx.dtype, np.integer):
      raise ValueError(f"codebook indices must be integers, got dtype {idx.dtype}")
    if idx.ndim >= 1:
      m = _batch_mask(mask, idx.shape[0])
      if m is not None:
        idx = idx[m]
    elif mask is not None:
      raise ValueError("a mask needs indices with a batch axis")
    idx = idx.reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= self.num_entries):
      raise ValueError(f"codebook indices must be in [0, {self.num_entries}), got [{idx.min()}, {idx.max()}]")
    self.counts += np.bincount(idx, minlength=self.num_entries).astype(np.int64)
    return self

  def merge(self, other: CodebookStats) -> CodebookStats:
    self._check_same_kind(other)
    if other.num_entries != self.num_entries:
      raise ValueError(f"cannot merge codebooks of {self.num_entries} and {other.num_entries} entries")
    out = CodebookStats(self.num_entries)
    out.counts = self.counts + other.counts
    return out

  def usage(self) -> float:
    return float(np.count_nonzero(self.counts)) / self.num_entries

  def entropy(self) -> float:
    total = self.counts.sum()
    if total == 0:
      raise ValueError("no codebook indices accumulated")
    p = self.counts.astype(np.float64) / total
    return float(np.sum(-np.log2(p + CODEBOOK_ENTROPY_EPS) * p))

  def compute(self) -> dict[str, float]:
    return {"CodebookUsage": self.usage(), "CodebookEntropy": self.entropy()}

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"counts": self.counts}

  def with_state(self, state: Mapping[str, np.ndarray]) -> CodebookStats:
    out = CodebookStats(self.num_entries)
    out.counts = np.asarray(state["counts"], np.int64).copy()
    if out.counts.shape != (self.num_entries,):
      raise ValueError(f"codebook histogram of shape {out.counts.shape} does not fit {self.num_entries} entries")
    return out


# ----------------------------------------------------------------------------
# Multi-host.


def allgather_merge(accumulator: _Accumulator) -> _Accumulator:
  """Every process's accumulator merged into one (the same result on every process).

  All processes must call this with the same kind of accumulator. The state is
  sent bit-exactly (float64/int64 arrays travel as raw 32-bit words, so nothing is
  rounded to float32 when x64 is off), shapes may differ between processes (an
  accumulator that saw no data, or a different number of Inception Score splits),
  and each process's samples enter once: the result is process 0's state merged
  with process 1's, and so on. With one process it returns an equal copy.
  Memory: every process holds all processes' states during the merge.
  """
  state = accumulator.state_dict()
  names = list(state)
  arrays = [np.asarray(state[n]) for n in names]  # tobytes() is C order; keeps 0-d arrays 0-d
  ndims = [a.ndim for a in arrays]
  shape_vec = np.array([1] + [d for a in arrays for d in a.shape], np.int32)  # leading 1: never empty
  all_shapes = np.asarray(multihost_utils.process_allgather(shape_vec))

  def shapes_of(row):
    out, pos = [], 1
    for nd in ndims:
      out.append(tuple(int(v) for v in row[pos:pos + nd]))
      pos += nd
    return out

  per_process_shapes = [shapes_of(row) for row in all_shapes]
  nbytes = [sum(int(np.prod(s)) * a.itemsize for s, a in zip(shapes, arrays)) for shapes in per_process_shapes]
  words = max(1, -(-max(nbytes) // 4))
  buf = np.zeros((words * 4,), np.uint8)
  payload = b"".join(a.tobytes() for a in arrays)
  buf[:len(payload)] = np.frombuffer(payload, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buf.view(np.uint32)))

  merged = None
  for row, shapes in zip(gathered, per_process_shapes):
    raw = np.ascontiguousarray(row).view(np.uint8)
    pos, part_state = 0, {}
    for name, shape, a in zip(names, shapes, arrays):
      size = int(np.prod(shape)) * a.itemsize
      part_state[name] = np.frombuffer(raw[pos:pos + size].tobytes(), a.dtype).reshape(shape)
      pos += size
    part = accumulator.with_state(part_state)
    merged = part if merged is None else merged.merge(part)
  return merged


# ----------------------------------------------------------------------------
# Files: ADM reference statistics and sample batches.


def load_reference_stats(path: str | os.PathLike, *, expected_dim: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
  """``(mu [D], sigma [D, D])`` (float64) from an ADM-style statistics ``.npz`` (keys ``mu``, ``sigma``)."""
  source = io.BytesIO(paths.resolve(path).read_bytes()) if paths.is_url(path) else path
  with np.load(source, allow_pickle=False) as data:
    keys = list(data.files)
    if "mu" not in keys or "sigma" not in keys:
      missing = [k for k in ("mu", "sigma") if k not in keys]
      hint = ""
      if "arr_0" in keys:
        hint = (" It holds 'arr_0', i.e. an ADM image batch: compute its Inception features and "
                "statistics first (FeatureStats), then save them with save_reference_stats.")
      raise ValueError(f"{path}: reference statistics need keys 'mu' and 'sigma'; missing {missing} "
                       f"(keys present: {keys}).{hint}")
    mu = np.asarray(data["mu"], np.float64)
    sigma = np.asarray(data["sigma"], np.float64)
  if mu.ndim != 1:
    raise ValueError(f"{path}: 'mu' must be 1-D, got shape {mu.shape}")
  d = mu.shape[0]
  if sigma.shape != (d, d):
    raise ValueError(f"{path}: 'sigma' must be [{d}, {d}] to match 'mu', got shape {sigma.shape}")
  if expected_dim is not None and d != expected_dim:
    raise ValueError(f"{path}: statistics of dimension {d}, expected {expected_dim}")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f"{path}: statistics contain NaN or inf")
  return mu, sigma


def save_reference_stats(path: str | os.PathLike, stats, sigma=None) -> None:
  """Writes ``mu``/``sigma`` (float64) in the ADM format.

  ``stats`` is a ``FeatureStats``/``FeatureStatsMetric``, or ``mu`` with ``sigma`` given.
  The file is written to ``path`` exactly (no ``.npz`` appended).
  """
  if sigma is None:
    mu, sigma = _as_mean_cov(stats)
  else:
    mu = np.asarray(stats, np.float64)
    sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"need mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
  if not paths.is_url(path):
    with open(path, "wb") as f:
      np.savez(f, mu=mu, sigma=sigma)
    return
  buffer = io.BytesIO()  # one upload (np.savez seeks in what it writes)
  np.savez(buffer, mu=mu, sigma=sigma)
  paths.write_bytes_atomic(path, buffer.getvalue())


class AdmSamplesWriter:
  """Streams uint8 NHWC images into an ADM sample ``.npz`` (one array ``arr_0`` ``[N, H, W, 3]``).

  The total count is fixed up front (the ``.npy`` header holds the shape), so the
  batches go straight into the zip member without keeping all images in memory::

    with AdmSamplesWriter(path, num_images=50_000, height=256, width=256) as w:
      for batch in batches:
        w.write(batch_u8)

  A URL's file (``gs://...``) is written to a local temporary file and uploaded whole on ``close``.
  """

  def __init__(self, path: str | os.PathLike, num_images: int, height: int, width: int, channels: int = 3):
    self.path = os.fspath(path)
    self.shape = (int(num_images), int(height), int(width), int(channels))
    self.written = 0
    self._local = self.path
    if paths.is_url(self.path):
      fd, self._local = tempfile.mkstemp(prefix="maskbit_samples_", suffix=".npz")
      os.close(fd)
    self._zip = zipfile.ZipFile(self._local, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
    self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
    np.lib.format.write_array_header_1_0(
        self._member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                       "fortran_order": False, "shape": self.shape})

  def write(self, images_uint8) -> None:
    x = np.asarray(images_uint8)
    if x.dtype != np.uint8:
      raise ValueError(f"ADM samples must be uint8 (use images_to_uint8), got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1:] != self.shape[1:]:
      hint = " (it looks like NCHW: transpose to NHWC)" if x.ndim == 4 and x.shape[1] == self.shape[3] else ""
      raise ValueError(f"ADM samples must be NHWC {list(self.shape[1:])}, got shape {x.shape}{hint}")
    if self.written + x.shape[0] > self.shape[0]:
      raise ValueError(f"more than the declared {self.shape[0]} images")
    self._member.write(np.ascontiguousarray(x).tobytes())
    self.written += x.shape[0]

  def close(self) -> None:
    if self._zip is None:
      return
    self._member.close()
    self._zip.close()
    self._zip = None
    if self.written != self.shape[0]:
      os.remove(self._local)
      raise ValueError(f"{self.path}: {self.written} images written, {self.shape[0]} declared; file removed")
    if self._local != self.path:
      try:
        with open(self._local, "rb") as src, paths.resolve(self.path).open("wb") as dst:
          shutil.copyfileobj(src, dst, 1 << 22)
      finally:
        os.remove(self._local)

  def __enter__(self) -> AdmSamplesWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    elif self._zip is not None:
      self._member.close()
      self._zip.close()
      if self._local != self.path:
        os.remove(self._local)
      self._zip = None
      os.remove(self.path)


def write_adm_samples_npz(path: str | os.PathLike, images_uint8) -> None:
  """Writes images uint8 ``[N, H, W, 3]`` as the ADM sample format (``arr_0``), to ``path`` exactly."""
  x = np.asarray(images_uint8)
  if x.ndim != 4 or x.shape[-1] != 3:
    hint = " (it looks like NCHW: transpose to NHWC)" if x.ndim == 4 and x.shape[1] == 3 else ""
    raise ValueError(f"ADM samples must be uint8 NHWC [N, H, W, 3], got shape {x.shape}{hint}")
  with AdmSamplesWriter(path, x.shape[0], x.shape[1], x.shape[2], x.shape[3]) as writer:
    writer.write(x)


def images_to_uint8(images) -> np.ndarray:
  """Float [0, 1] images to uint8 on the host as the reference sampling script does (``image_io.to_uint8``:
  clamp, x255, truncate)."""
  from maskbit_jax.image_io import to_uint8

  return to_uint8(np.asarray(images))
