"""Inception Score from Inception logits ``[B, C]``: the reference evaluators' one split, and ADM's splits.

* ``InceptionScore``: as ``TokenizerEvaluator`` / ``GeneratorEvaluator``
  (``evaluator/evaluator.py``) compute it, ONE split over all samples.
* ``InceptionScoreSplits``: as the ADM suite (``utils/adm_eval_suite.py``,
  ``compute_inception_score(split_size=5000)``) computes it for the generator
  tables, the mean over consecutive splits of 5000 samples.

Both are host accumulators (see ``accumulator``) with float64 sums.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from maskbit_jax.evaluation.accumulator import Accumulator, batch_mask, process_local_rows

IS_EPS = 1e-16             # reference evaluator: log(p + eps) and log(mean p + eps).
ADM_IS_SPLIT_SIZE = 5000   # ADM ``compute_inception_score(split_size=5000)``.


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


class InceptionScore(Accumulator):
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
    m = batch_mask(mask, p.shape[0])
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


class InceptionScoreSplits(Accumulator):
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
    m = batch_mask(mask, p.shape[0])
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
