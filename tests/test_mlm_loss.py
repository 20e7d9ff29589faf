"""Generator training masking and MLM loss against the reference (every ``generator*_io.npz``).

Fixture values from the reference ``get_mask_tokens`` (with its uniform draws
stored) and ``MLMLoss(label_smoothing=0.1)``; README section 8: losses to
rtol = atol = 1e-5, masks and tokens exactly.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import golden_path, load_npz
from maskbit_jax.losses.masking import TRAIN_MASK_MODES, mask_tokens, train_mask_ratio
from maskbit_jax.losses.mlm import mlm_loss, smoothed_cross_entropy

LOSS_TOL = dict(rtol=1e-5, atol=1e-5)
LABEL_SMOOTHING = 0.1  # the value the fixtures were made with (README section 4)


def _generator_names():
  import json

  path = golden_path() / "fixture_configs.json"
  if not path.is_file():
    return ["<no fixtures>"]
  names = [n for n in json.loads(path.read_text())["configs"] if n.startswith("generator")]
  return [n for n in names if (golden_path() / f"{n}_io.npz").is_file()]


@pytest.fixture(scope="module", params=_generator_names())
def case(request, golden, fixture_configs):
  name = request.param
  cfg = fixture_configs["configs"][name]
  return name, cfg, load_npz(golden / f"{name}_io.npz")


def _classes_per_split(cfg) -> int:
  return 2 ** (cfg["token_size"] // cfg["codebook_splits"])


def test_fixture_layout(case):
  _, cfg, io = case
  b, n, m, c = io["logits"].shape
  assert m == cfg["codebook_splits"] and c == _classes_per_split(cfg)
  assert io["tokens_split"].shape == io["mask"].shape == (b, n, m)


def test_masking_reproduces_reference(case):
  _, cfg, io = case
  mask_token = _classes_per_split(cfg)
  masked, mask = mask_tokens(
      jnp.asarray(io["tokens_split"]), mask_token, None, mode="arccos",
      uniform_r=io["mask_uniform_r"], uniform_tokens=io["mask_uniform_tokens"])
  np.testing.assert_array_equal(np.asarray(mask), io["mask"])
  np.testing.assert_array_equal(np.asarray(masked), io["masked_tokens"])
  ratio = train_mask_ratio(io["mask_uniform_r"], "arccos")
  np.testing.assert_allclose(np.asarray(ratio), io["mask_ratio"], rtol=1e-6, atol=1e-7)


def _mlm_keys(io):
  matches = [re.fullmatch(r"mlm_sum_splits_(\d)_(.+)", k) for k in io]
  return sorted({(int(m.group(1)), m.group(2)) for m in matches if m})


def test_mlm_loss_matches_reference(case):
  _, _, io = case
  keys = _mlm_keys(io)
  assert keys, "no mlm_sum_splits_* values in the fixture"
  fn = jax.jit(mlm_loss, static_argnames=("label_smoothing", "sum_splits"))
  for sum_splits in sorted({s for s, _ in keys}):
    out = fn(jnp.asarray(io["logits"]), jnp.asarray(io["tokens_split"]), jnp.asarray(io["mask"]),
             label_smoothing=LABEL_SMOOTHING, sum_splits=bool(sum_splits))
    for s, term in keys:
      if s == sum_splits:
        assert out[term].dtype == jnp.float32
        want = io[f"mlm_sum_splits_{s}_{term}"]
        np.testing.assert_allclose(np.asarray(out[term]), want, err_msg=f"sum_splits={s} {term}", **LOSS_TOL)


def test_train_mask_ratio_table(golden):
  path = golden / "sampling.npz"
  if not path.is_file():
    pytest.skip("no sampling.npz")
  data = load_npz(path)
  for mode in TRAIN_MASK_MODES:
    np.testing.assert_allclose(np.asarray(train_mask_ratio(data["train_mask_r"], mode)), data[f"train_mask_val_{mode}"],
                               rtol=1e-6, atol=1e-7, err_msg=mode)


# Unit tests (no fixtures).

def _random_case(seed=0, shape=(2, 5, 3), classes=8):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  logits = jax.random.normal(k1, shape + (classes,))
  targets = jax.random.randint(k2, shape, 0, classes)
  mask = jax.random.bernoulli(k3, 0.5, shape)
  return logits, targets, mask


def test_smoothed_cross_entropy_formula():
  logits, targets, _ = _random_case()
  logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
  nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  want = 0.9 * nll + 0.1 * (-logp.mean(-1))
  np.testing.assert_allclose(np.asarray(smoothed_cross_entropy(logits, targets, 0.1)), want, rtol=1e-6)


def test_losses_decrease_toward_targets():
  logits, targets, mask = _random_case()
  onehot = jax.nn.one_hot(targets, logits.shape[-1])
  # Label smoothing penalises over-confidence, so its loss has a finite minimum:
  # modest steps with smoothing, large ones only without it.
  for smoothing, steps in ((LABEL_SMOOTHING, (0.0, 0.5, 1.0, 2.0)), (0.0, (0.0, 1.0, 3.0, 10.0))):
    outs = [mlm_loss(logits + a * onehot, targets, mask, label_smoothing=smoothing) for a in steps]
    for term in ("mlm_loss", "masked_token_loss"):
      values = [float(o[term]) for o in outs]
      assert all(x > y for x, y in zip(values, values[1:])), (smoothing, term, values)
  assert float(outs[-1]["correct_tokens"]) == 1.0 and float(outs[-1]["masked_correct_tokens"]) == 1.0


def test_sum_splits_scales_losses_only():
  logits, targets, mask = _random_case()
  m = logits.shape[2]
  plain, summed = mlm_loss(logits, targets, mask), mlm_loss(logits, targets, mask, sum_splits=True)
  for term in ("mlm_loss", "masked_token_loss"):
    np.testing.assert_allclose(float(summed[term]), m * float(plain[term]), rtol=1e-6)
  for term in ("correct_tokens", "masked_correct_tokens"):
    assert float(summed[term]) == float(plain[term])


def test_gradient_finite_and_only_through_mlm_loss():
  logits, targets, mask = _random_case()
  grad = jax.grad(lambda x: mlm_loss(x, targets, mask)["mlm_loss"])(logits)
  assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).sum()) > 0
  # The reference computes the logged terms on detached logits.
  grad_masked = jax.grad(lambda x: mlm_loss(x, targets, mask)["masked_token_loss"])(logits)
  assert float(jnp.abs(grad_masked).sum()) == 0.0


def test_empty_mask_is_finite():
  logits, targets, mask = _random_case()
  out = jax.jit(mlm_loss)(logits, targets, jnp.zeros_like(mask))
  assert float(out["masked_token_loss"]) == 0.0 and float(out["masked_correct_tokens"]) == 0.0
  assert all(np.isfinite(float(v)) for v in out.values())


def test_unknown_mode_raises():
  tokens = jnp.zeros((2, 4, 2), jnp.int32)
  with pytest.raises(ValueError, match="masking mode"):
    mask_tokens(tokens, 4, jax.random.key(0), mode="root")
  with pytest.raises(ValueError, match="masking mode"):
    train_mask_ratio(jnp.zeros(3), "nope")


@pytest.mark.parametrize("mode", TRAIN_MASK_MODES)
def test_mask_tokens_key_determinism_and_jit(mode):
  tokens = jax.random.randint(jax.random.key(1), (4, 16, 2), 0, 64)
  fn = jax.jit(mask_tokens, static_argnames=("mode", "mask_token"))
  a = fn(tokens, mask_token=64, key=jax.random.key(7), mode=mode)
  b = fn(tokens, mask_token=64, key=jax.random.key(7), mode=mode)
  c = fn(tokens, mask_token=64, key=jax.random.key(8), mode=mode)
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))
  masked, mask = map(np.asarray, a)
  assert masked.dtype == np.asarray(tokens).dtype
  np.testing.assert_array_equal(masked, np.where(mask, 64, np.asarray(tokens)))


def test_full_min_masking_ratio_masks_everything():
  # r is scaled to 0, where every schedule gives ratio 1.
  tokens = jnp.ones((3, 8, 2), jnp.int32)
  for mode in TRAIN_MASK_MODES:
    masked, mask = mask_tokens(tokens, 5, jax.random.key(0), mode=mode, min_masking_ratio=1.0)
    assert bool(mask.all()) and bool((masked == 5).all())
