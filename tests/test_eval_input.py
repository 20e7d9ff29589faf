"""The tokenizer evaluation's grain input: the very batches of ``eval_batches`` and the very same metrics."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import maskbit_jax
from conftest import tokenizer_config
from maskbit_jax.data.sources import SyntheticSource, eval_batches, eval_dataset
from maskbit_jax.distributed import one_batch_behind
from maskbit_jax.evaluation.runs import _mesh_and_batch_sharding, evaluate_tokenizer, tokenizer_eval_step
from maskbit_jax.evaluation.codebook import CodebookStats
from maskbit_jax.evaluation.reconstruction import ReconstructionMetrics


@pytest.mark.parametrize("num,batch,procs", [(11, 4, 1), (11, 4, 2), (2, 4, 3), (9, 8, 2)])
def test_grain_batches_equal_eval_batches(num, batch, procs):
  source = SyntheticSource(num, 8, seed=1)
  for p in range(procs):
    plain = list(eval_batches(source, batch, process_index=p, process_count=procs))
    grained = list(eval_dataset(source, batch, process_index=p, process_count=procs, num_threads=3, prefetch=5))
    assert len(grained) == len(plain)
    for a, b in zip(plain, grained):
      assert sorted(a) == sorted(b)
      for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_grain_evaluation_equals_a_plain_loop(golden, fixture_configs):
  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  source = SyntheticSource(13, 32, seed=3)  # 13 images in batches of 8: the second is padded
  step, (_, batch_sh) = tokenizer_eval_step(tok), _mesh_and_batch_sharding()

  def dispatch(batch):
    return step(tok.params, None, None, jax.device_put(batch["image"].astype(np.float32), batch_sh(4)))

  # one image at a time on the main thread, one blocking transfer per batch: the input the evaluation had
  recon, codebook, plain = ReconstructionMetrics(), CodebookStats(tok.codebook_size), []
  for batch in eval_batches(source, 8):
    out = jax.device_get(dispatch(batch))
    recon.update_per_image(out["per_image"], mask=batch["mask"])
    codebook.update(out["indices"], mask=batch["mask"])
    plain.append((batch["mask"], out))
  grained = list(one_batch_behind(eval_dataset(source, 8, num_threads=3), dispatch))
  assert len(grained) == len(plain) == 2 and int(plain[-1][0].sum()) == 5
  for (mask, a), (batch, b) in zip(plain, grained):
    np.testing.assert_array_equal(batch["mask"], mask)
    np.testing.assert_array_equal(b["indices"][mask], a["indices"][mask])
    for k in a["per_image"]:  # per-image PSNR, SSIM, MAE, MSE
      np.testing.assert_array_equal(b["per_image"][k][mask], a["per_image"][k][mask], err_msg=k)

  result = evaluate_tokenizer(tok, source, batch_size=8, num_images=None, progress=False, num_threads=3)
  expected = dict(recon.compute(), CodebookUsage=codebook.usage(), CodebookEntropy=codebook.entropy())
  assert result["complete"] and result["num_images"] == 13
  for k, v in expected.items():
    assert result[k] == v, k
