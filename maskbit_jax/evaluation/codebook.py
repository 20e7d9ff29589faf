"""Codebook usage and entropy of a tokenizer's token indices, as a streaming histogram (``CodebookStats``).

As the reference ``TokenizerEvaluator`` (``evaluator/evaluator.py``) reports
them; a host accumulator (see ``accumulator``) with int64 counts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from maskbit_jax.evaluation.accumulator import Accumulator, batch_mask, process_local_rows

CODEBOOK_ENTROPY_EPS = 1e-8  # reference: -sum p log2(p + 1e-8).


class CodebookStats(Accumulator):
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
      m = batch_mask(mask, idx.shape[0])
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
