"""MaskGIT sampler, its schedules and token splitting against the reference (``sampling.npz``).

Schedule tables: float32 values to rtol = atol = 1e-6, mask lengths exactly.
Traces: every stored trace is replayed with the stored model logits and the
stored Gumbel noise; model inputs, draws, per-step tokens and the final
combined tokens must match exactly, probabilities (where stored) to 1e-5.
Trace names, schedule lengths, modes and sizes are read from the fixtures.
"""

from __future__ import annotations

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import golden_path, load_npz

from maskbit_jax.bits import combine_tokens, split_tokens
from maskbit_jax.sampling import schedules
from maskbit_jax.sampling.maskgit_sampler import TRACE_KEYS, sample_tokens

SCHED_TOL = dict(rtol=1e-6, atol=1e-6)
PROBS_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def sampling(golden) -> dict:
  path = golden / "sampling.npz"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  return load_npz(path)


def _schedule_lengths(sampling) -> list[int]:
  lengths = sorted(int(m.group(1)) for k in sampling if (m := re.fullmatch(r"sched(\d+)_progress", k)))
  assert lengths, "no sched<S>_progress tables in sampling.npz"
  return lengths


def _steps(s: int) -> jax.Array:
  return jnp.arange(s, dtype=jnp.int32)


# ----------------------------------------------------------------------------- schedule tables


def test_progress_and_noise_factor(sampling):
  for s in _schedule_lengths(sampling):
    np.testing.assert_allclose(schedules.step_progress(_steps(s), s), sampling[f"sched{s}_progress"],
                               **SCHED_TOL, err_msg=f"sched{s}_progress")
    np.testing.assert_allclose(schedules.noise_scale_factor(_steps(s), s),
                               sampling[f"sched{s}_gumbel_scale_factor"], **SCHED_TOL,
                               err_msg=f"sched{s}_gumbel_scale_factor")


def test_masking_ratio_and_lengths(sampling):
  checked = 0
  for s in _schedule_lengths(sampling):
    progress = schedules.step_progress(_steps(s), s)
    for key in sampling:
      m = re.fullmatch(rf"sched{s}_mask_ratio_(\w+)", key)
      if not m:
        continue
      mode = m.group(1)
      ratio = schedules.masking_ratio(progress, mode)
      assert ratio.dtype == jnp.float32
      np.testing.assert_allclose(ratio, sampling[key], **SCHED_TOL, err_msg=key)
      for len_key in sampling:
        lm = re.fullmatch(rf"sched{s}_mask_len_{re.escape(mode)}_maskable(\d+)", len_key)
        if lm:
          mask_len = jnp.floor(ratio * jnp.float32(int(lm.group(1))))
          np.testing.assert_array_equal(mask_len, sampling[len_key], err_msg=len_key)
          checked += 1
  assert checked, "no mask length tables found"


def test_guidance_multipliers(sampling):
  for s in _schedule_lengths(sampling):
    np.testing.assert_allclose(schedules.guidance_multiplier(_steps(s), s, "linear"),
                               sampling[f"sched{s}_guidance_linear"], **SCHED_TOL)
    np.testing.assert_array_equal(schedules.guidance_multiplier(_steps(s), s, "none"), np.ones(s))
    pows = [m.group(1) for k in sampling if (m := re.fullmatch(rf"sched{s}_guidance_cosine_pow([\d.]+)", k))]
    assert pows
    for p in pows:
      np.testing.assert_allclose(schedules.guidance_multiplier(_steps(s), s, "cosine", float(p)),
                                 sampling[f"sched{s}_guidance_cosine_pow{p}"], **SCHED_TOL,
                                 err_msg=f"cosine pow {p}")


def test_annealed_temperature(sampling):
  for s in _schedule_lengths(sampling):
    temp = schedules.annealed_softmax_temperature(schedules.step_progress(_steps(s), s))
    np.testing.assert_allclose(temp, sampling[f"sched{s}_softmax_temperature_annealed"], **SCHED_TOL)


def test_train_mask_ratio(sampling):
  modes = [m.group(1) for k in sampling if (m := re.fullmatch(r"train_mask_val_(\w+)", k))]
  assert modes
  for mode in modes:
    np.testing.assert_allclose(schedules.train_mask_ratio(sampling["train_mask_r"], mode),
                               sampling[f"train_mask_val_{mode}"], **SCHED_TOL, err_msg=mode)


def test_schedules_trace_under_jit():
  @jax.jit
  def f(step):
    p = schedules.step_progress(step, 8)
    return (schedules.masking_ratio(p, "arccos"), schedules.guidance_multiplier(step, 8, "cosine", 3.0),
            schedules.annealed_softmax_temperature(p))

  ratio, mult, temp = f(jnp.int32(3))
  np.testing.assert_allclose(ratio, schedules.masking_ratio(0.5, "arccos"))
  np.testing.assert_allclose(mult, (1 - np.cos(np.pi * (3 / 8) ** 3)) / 2, rtol=1e-6)
  np.testing.assert_allclose(temp, 0.9, rtol=1e-6)


def test_unknown_schedule_names():
  with pytest.raises(ValueError, match="arccos"):
    schedules.masking_ratio(0.5, "exp")
  with pytest.raises(ValueError, match="cosine"):
    schedules.guidance_multiplier(1, 4, "exp")
  with pytest.raises(ValueError, match="arccos"):
    schedules.train_mask_ratio(0.5, "root")  # no root mode at training time, as in the reference


# ----------------------------------------------------------------------------- trace replay


def _trace_names() -> list[str]:
  path = golden_path() / "fixture_configs.json"
  if not path.is_file():
    return ["<no fixtures>"]
  names = [k[len("sampling_"):] for k in json.loads(path.read_text())["configs"] if k.startswith("sampling_")]
  return names or ["<no traces>"]


def _null_class(fixture_configs) -> int | None:
  classes = {c["nclass"] for n, c in fixture_configs["configs"].items() if n.startswith("generator") and "nclass" in c}
  return classes.pop() if len(classes) == 1 else None


@pytest.fixture(scope="module", params=_trace_names())
def replay(request, sampling, fixture_configs):
  name = request.param
  cfg = fixture_configs["configs"].get(f"sampling_{name}")
  if cfg is None or f"trace{name}_labels" not in sampling:
    pytest.skip(f"no sampling trace {name!r}")
  stored = {k[len(f"trace{name}_"):]: v for k, v in sampling.items() if k.startswith(f"trace{name}_")}
  stored_logits = jnp.asarray(stored["model_logits"], jnp.float32)

  def logits_fn(tokens, labels, drop, step):
    del tokens, labels, drop  # the stored model output of this step stands in for the model
    return stored_logits[step]

  tokens, trace = sample_tokens(
      logits_fn, stored["labels"], None,
      num_steps=cfg["num_steps"], num_positions=cfg["patch_size"] ** 2,
      codebook_splits=cfg["codebook_splits"], mask_token=cfg["mask_token"],
      guidance_scale=cfg["guidance_scale"], guidance_annealing=cfg["guidance_annealing"],
      scale_pow=cfg["scale_pow"], softmax_temperature=cfg["softmax_temperature"],
      use_sampling_annealing=cfg["use_sampling_annealing"], randomize_temperature=cfg["randomize_temperature"],
      mask_schedule_strategy=cfg["mask_schedule_strategy"],
      cat_gumbel_noise=stored["cat_gumbel_noise"], conf_gumbel_noise=stored["conf_gumbel_noise"],
      return_trace=True)
  trace = jax.tree.map(np.asarray, trace)
  return name, cfg, stored, np.asarray(tokens), trace


def test_trace_model_inputs(replay, fixture_configs):
  name, cfg, stored, _, trace = replay
  s = cfg["num_steps"]
  for key in ("model_in_tokens", "model_in_drop"):
    assert trace[key].shape == stored[key].shape, key
    for i in range(s):
      np.testing.assert_array_equal(trace[key][i], stored[key][i], err_msg=f"trace {name} {key} step {i}")
  # The README describes the stored labels as taken after the reference model's
  # in-place null-class write; the stored values may also be the labels as handed
  # over (the reference concatenates a fresh tensor for guidance). Accept either
  # on dropped rows, nothing but the label on kept rows.
  null = _null_class(fixture_configs)
  ours = trace["model_in_labels"]
  with_null = np.where(trace["model_in_drop"], null if null is not None else ours, ours)
  ok = (stored["model_in_labels"] == ours) | (stored["model_in_labels"] == with_null)
  assert ok.all(), f"trace {name} model_in_labels differ:\n{ours}\n{stored['model_in_labels']}"
  np.testing.assert_array_equal(trace["model_logits"], stored["model_logits"])


def test_trace_steps(replay):
  name, cfg, stored, _, trace = replay
  if "probs" in stored:
    np.testing.assert_allclose(trace["probs"], stored["probs"], **PROBS_TOL, err_msg=f"trace {name} probs")
  for key in ("num_masked_in", "sampled_raw", "predicted_tokens"):
    assert trace[key].shape == stored[key].shape, key
    for i in range(cfg["num_steps"]):
      np.testing.assert_array_equal(trace[key][i], stored[key][i], err_msg=f"trace {name} {key} step {i}")


def test_trace_final_tokens(replay):
  name, cfg, stored, tokens, trace = replay
  np.testing.assert_array_equal(tokens, trace["predicted_tokens"][-1])
  token_bits = int(cfg["codebook_size"]).bit_length() - 1
  combined = np.asarray(combine_tokens(tokens, token_bits))
  expected = stored["final_tokens_combined"]
  np.testing.assert_array_equal(expected, np.round(expected))
  np.testing.assert_array_equal(combined, expected.astype(np.int64), err_msg=f"trace {name}")


# ----------------------------------------------------------------------------- sampler unit tests

SMALL = dict(num_steps=4, num_positions=16, codebook_splits=2, mask_token=8)


def _toy_logits_fn(calls=None):
  table = jax.random.normal(jax.random.key(7), (11, 16, 2, 8), jnp.float32) * 2.0

  def logits_fn(tokens, labels, drop, step):
    if calls is not None:
      calls.append(tokens.shape)  # runs at trace time only
    cond = table[labels % 11]
    # Depend on the visible tokens and the drop mask so every input matters.
    seen = jax.nn.one_hot(jnp.roll(tokens, 1, axis=1) % 8, 8) * 0.5
    return jnp.where(drop[:, None, None, None], 0.3 * cond, cond) + seen + 0.01 * step

  return logits_fn


def test_deterministic_and_key_dependent():
  fn = _toy_logits_fn()
  labels = np.array([3, 5, 9])
  a = sample_tokens(fn, labels, jax.random.key(0), guidance_scale=2.0, **SMALL)
  b = sample_tokens(fn, labels, jax.random.key(0), guidance_scale=2.0, **SMALL)
  c = sample_tokens(fn, labels, jax.random.key(1), guidance_scale=2.0, **SMALL)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("guidance_scale", [0.0, 3.0])
def test_every_entry_filled(batch, guidance_scale):
  labels = np.arange(batch) * 2
  tokens, trace = sample_tokens(_toy_logits_fn(), labels, jax.random.key(3), guidance_scale=guidance_scale,
                                guidance_annealing="linear", return_trace=True, **SMALL)
  assert tokens.shape == (batch, 16, 2) and tokens.dtype == jnp.int32
  assert int(tokens.min()) >= 0 and int(tokens.max()) < SMALL["mask_token"]
  assert set(trace) == set(TRACE_KEYS)
  model_batch = 2 * batch if guidance_scale else batch
  assert trace["model_in_tokens"].shape == (4, model_batch, 16, 2)
  expected_drop = np.arange(model_batch) >= batch
  np.testing.assert_array_equal(trace["model_in_drop"], np.broadcast_to(expected_drop, (4, model_batch)))
  masked = np.asarray(trace["num_masked_in"])
  assert (masked[0] == 32).all() and (np.diff(masked, axis=0) < 0).all()
  # Once revealed, a token never changes.
  pred = np.asarray(trace["predicted_tokens"])
  inputs = np.asarray(trace["model_in_tokens"])[:, :batch]
  known = inputs[1:] != SMALL["mask_token"]
  np.testing.assert_array_equal(pred[1:][known], inputs[1:][known])


def test_traced_once_and_outer_jit():
  calls = []
  fn = _toy_logits_fn(calls)
  labels = np.array([1, 2])
  first = sample_tokens(fn, labels, jax.random.key(0), guidance_scale=1.5, **SMALL)
  sample_tokens(fn, np.array([4, 6]), jax.random.key(5), guidance_scale=1.5, **SMALL)
  assert len(calls) == 1, calls  # one trace of one scan body, reused by the second call

  outer = jax.jit(functools.partial(sample_tokens, fn, guidance_scale=1.5, **SMALL))
  np.testing.assert_array_equal(outer(jnp.asarray(labels), jax.random.key(0)), first)


def test_more_steps_than_entries_remasks_everything():
  # N*M = 2 entries, 3 steps. Step 1 starts with n = 1 masked entry, so k is
  # clamped to n - 1 = 0 and index k - 1 = -1 picks the LARGEST confidence (+inf
  # of the known entry): the reference then masks every entry again, known ones
  # included. Reproduced on purpose.
  def logits_fn(tokens, labels, drop, step):
    return jnp.zeros(tokens.shape + (4,), jnp.float32)

  tokens, trace = sample_tokens(logits_fn, np.array([0]), jax.random.key(0), num_steps=3, num_positions=1,
                                codebook_splits=2, mask_token=4, return_trace=True)
  np.testing.assert_array_equal(trace["num_masked_in"][:, 0], [2, 1, 2])
  assert int(tokens.max()) < 4


def test_known_entries_and_bits_are_kept():
  """Editing: fully known entries never masked (the model sees them from step 0), partly known ones agree
  with their fixed bits, each image counts its own free entries; nothing known is the plain sampler."""
  fn, labels, key = _toy_logits_fn(), np.array([3, 5, 9]), jax.random.key(4)
  rng = np.random.default_rng(0)
  values = rng.integers(0, 8, (3, 16, 2)).astype(np.int32)
  bits = np.zeros((3, 16, 2), np.int32)
  bits[0, :10] = 7        # image 0: 10 positions fully known
  bits[1, :, 1] = 0b100   # image 1: the high bit of every second split
  # image 2: nothing known
  tokens, trace = sample_tokens(fn, labels, key, guidance_scale=2.0, known_tokens=values, known_bits=bits,
                                return_trace=True, **SMALL)
  tokens = np.asarray(tokens)
  np.testing.assert_array_equal(tokens & bits, values & bits)
  inputs = np.asarray(trace["model_in_tokens"])[:, :3]
  np.testing.assert_array_equal(inputs[:, 0, :10], np.broadcast_to(values[0, :10], (4, 10, 2)))
  assert (inputs[0, 1:] == SMALL["mask_token"]).all()
  masked = np.asarray(trace["num_masked_in"])
  assert masked[0].tolist() == [12, 32, 32] and (np.diff(masked, axis=0) < 0).all()
  assert (tokens[0, 10:] != values[0, 10:]).any() and (tokens[1] != values[1]).any()
  plain = sample_tokens(fn, labels, key, guidance_scale=2.0, **SMALL)
  none_known, _ = sample_tokens(fn, labels, key, guidance_scale=2.0, known_tokens=values,  # the program above
                                known_bits=np.zeros_like(bits), return_trace=True, **SMALL)
  np.testing.assert_array_equal(none_known, plain)
  with pytest.raises(ValueError, match="both or neither"):
    sample_tokens(fn, labels, key, known_tokens=values, **SMALL)
  with pytest.raises(ValueError, match=r"known_bits must lie in \[0, 8\)"):
    sample_tokens(fn, labels, key, known_tokens=values, known_bits=bits + 8, **SMALL)
  with pytest.raises(ValueError, match="known_tokens must have shape"):
    sample_tokens(fn, labels, key, known_tokens=values[:2], known_bits=bits[:2], **SMALL)


def test_sampler_argument_errors():
  fn = _toy_logits_fn()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_steps"):
    sample_tokens(fn, np.array([1]), key, **{**SMALL, "num_steps": 0})
  with pytest.raises(ValueError, match="arccos"):
    sample_tokens(fn, np.array([1]), key, mask_schedule_strategy="exp", **SMALL)
  with pytest.raises(ValueError, match="cosine"):
    sample_tokens(fn, np.array([1]), key, guidance_scale=1.0, guidance_annealing="exp", **SMALL)
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    sample_tokens(fn, np.array([1, 10]), key, nclass=10, **SMALL)
  with pytest.raises(ValueError, match="key"):
    sample_tokens(fn, np.array([1]), None, **SMALL)
  with pytest.raises(ValueError, match="conf_gumbel_noise"):
    sample_tokens(fn, np.array([1]), key, conf_gumbel_noise=np.zeros((4, 1, 16)), **SMALL)


# ----------------------------------------------------------------------------- factorization


@pytest.mark.parametrize("splits", [1, 2, 3, 4, 6])
def test_split_combine_round_trip(splits):
  tokens = jax.random.randint(jax.random.key(0), (3, 16), 0, 2**12)
  parts = split_tokens(tokens, 12, splits)
  bits = 12 // splits
  assert parts.shape == (3, 16, splits) and parts.dtype == jnp.int32
  np.testing.assert_array_equal(parts[..., 0], np.asarray(tokens) % (1 << bits))  # split 0 = low bits
  np.testing.assert_array_equal(combine_tokens(parts, 12), tokens)


def test_split_matches_generator_fixtures(golden, fixture_configs):
  checked = 0
  for name, cfg in fixture_configs["configs"].items():
    path = golden / f"{name}_io.npz"
    if not name.startswith("generator") or not path.is_file():
      continue
    io = load_npz(path)
    parts = split_tokens(io["tokens_raw"], cfg["token_size"], cfg["codebook_splits"])
    np.testing.assert_array_equal(parts, io["tokens_split"], err_msg=name)
    np.testing.assert_array_equal(combine_tokens(io["tokens_split"], cfg["token_size"]), io["tokens_raw"])
    checked += 1
  if not checked:
    pytest.skip("no generator fixtures")


def test_splits_must_divide_bits():
  with pytest.raises(ValueError, match="divide"):
    split_tokens(jnp.zeros((2,), jnp.int32), 12, 5)
  with pytest.raises(ValueError, match="divide"):
    combine_tokens(jnp.zeros((2, 5), jnp.int32), 12)
