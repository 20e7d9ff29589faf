"""BAR training pieces against the reference: MBM bit masking from the stored draws, label dropout, the MBM loss
and its gradient, RAR order annealing, and the optimizer (weight-decay groups, frozen parameters, schedule).

Fixtures come from ``MASKBIT_GOLDEN_BAR`` (default ``<repo>/../shared/golden_bar``); every config, shape and case
is read from the fixture files. Tolerances (README section 9): rtol = atol = 1e-4 for activations, logits and
gradients, 1e-5 for losses; bits, masks and counts exact.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from maskbit_jax.losses.bar_masking import (
    drop_labels,
    mbm_mask_bits,
    mbm_mask_from_uniform,
    mbm_mask_ratio,
    mbm_num_masked,
    mbm_timesteps,
    null_condition_id,
    rar_random_ratio,
    sample_orders,
)
from maskbit_jax.losses.bar_mbm_loss import mbm_loss
from maskbit_jax.train import bar_optim
from conftest import golden_bar_path

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-4, atol=1e-4)
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)


def _read_json(name: str) -> dict:
  path = golden_bar_path() / name
  return json.loads(path.read_text()) if path.is_file() else {}


def _load_npz(path) -> dict:
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def _generator_names() -> list[str]:
  names = [n for n, v in _read_json("fixture_configs.json").items()
           if isinstance(v, dict) and "generator" in v.get("model", {})
           and (golden_bar_path() / f"{n}_io.npz").is_file()]
  return names or ["<no fixtures>"]


def _head_names() -> list[str]:
  names = [n for n, v in _read_json("fixture_configs.json").items()
           if n.startswith("mbm_head") and isinstance(v, dict) and (golden_bar_path() / f"{n}_io.npz").is_file()]
  return names or ["<no fixtures>"]


def _generator_manifests() -> list[str]:
  folder = golden_bar_path() / "manifests"
  if not folder.is_dir():
    return ["<no fixtures>"]
  names = sorted(p.stem for p in folder.glob("*.json") if "generator" in json.loads(p.read_text())["config"])
  return names or ["<no fixtures>"]


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="session")
def golden() -> pathlib.Path:
  path = golden_bar_path()
  if not (path / "fixture_configs.json").is_file():
    message = f"BAR golden fixtures not found at {path} (set MASKBIT_GOLDEN_BAR)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def scalars(golden) -> dict:
  return json.loads((golden / "scalars.json").read_text())


@pytest.fixture(scope="session")
def fixture_configs(golden) -> dict:
  return json.loads((golden / "fixture_configs.json").read_text())


@pytest.fixture(scope="module", params=_generator_names())
def gen(request, golden):
  return request.param, _load_npz(golden / f"{request.param}_io.npz")


def _first_then_slow(names: list[str]) -> list:
  """The first case runs by default; the rest (same code path, ~8 s each on one core) with ``-m slow``."""
  return names[:1] + [pytest.param(n, marks=pytest.mark.slow) for n in names[1:]]


@pytest.fixture(scope="module", params=_head_names())
def head(request, golden):
  return request.param, _load_npz(golden / f"{request.param}_io.npz")


@pytest.fixture(scope="module", params=_generator_manifests())
def manifest(request, golden):
  return request.param, json.loads((golden / "manifests" / f"{request.param}.json").read_text())


def _close(actual, expected, name, tol=TOL):
  actual = np.asarray(actual)
  assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
  if expected.dtype.kind in "biu":
    np.testing.assert_array_equal(actual, expected, err_msg=name)
  else:
    np.testing.assert_allclose(actual, expected, err_msg=name, **tol)


# ---------------------------------------------------------------------------
# MBM bit masking from the stored reference draws


def test_head_fixture_masking_step_by_step(head, scalars):
  name, io = head
  k = io["train_target"].shape[-1]
  t = mbm_timesteps(io["train_normal_draw"])
  _close(t, io["train_t"], "train_t")
  ratio = mbm_mask_ratio(t, k)
  _close(ratio, io["train_mask_ratio"], "train_mask_ratio")
  num = mbm_num_masked(ratio, k)
  _close(num, io["train_num_masked"], "train_num_masked")
  if f"{name}__train_num_masked" in scalars:
    np.testing.assert_array_equal(np.asarray(num), scalars[f"{name}__train_num_masked"])
  _close(jnp.argsort(jnp.asarray(io["train_uniform"]), axis=-1), io["train_argsort_u"], "train_argsort_u")
  _close(mbm_mask_from_uniform(io["train_uniform"], num), io["train_masks"], "train_masks")


def test_head_fixture_masking_in_one_call(head, scalars):
  name, io = head
  masked, mask, ratio = mbm_mask_bits(io["train_target"], normal_draw=io["train_normal_draw"],
                                      uniform=io["train_uniform"])
  _close(masked, io["train_masked_input"], "train_masked_input")
  _close(mask, io["train_masks"], "train_masks")
  _close(ratio, io["train_mask_ratio"], "train_mask_ratio")
  # The reference rule (argsort(u) < m) is not "mask the m smallest u"; the fixture shows how often they differ.
  key = f"{name}__rows_whose_mask_would_differ_under_rank_rule"
  if key in scalars:
    ranks = np.argsort(np.argsort(io["train_uniform"], axis=-1), axis=-1)
    rank_rule = ranks < io["train_num_masked"][:, None]
    assert int(np.any(rank_rule != io["train_masks"], axis=-1).sum()) == scalars[key]


def test_generator_fixture_head_masking(gen, scalars):
  name, io = gen
  masked, mask, ratio = mbm_mask_bits(io["head_target"], normal_draw=io["head_normal_draw"],
                                      uniform=io["head_uniform"])
  _close(ratio, io["head_mask_ratio"], "head_mask_ratio")
  _close(mbm_num_masked(ratio, io["head_target"].shape[-1]), io["head_num_masked"], "head_num_masked")
  _close(mask, io["head_masks"], "head_masks")
  _close(masked, io["head_masked_input"], "head_masked_input")
  assert np.all(np.asarray(mask).sum(-1) == io["head_num_masked"])
  if f"{name}__head_num_masked" in scalars:
    np.testing.assert_array_equal(io["head_num_masked"], scalars[f"{name}__head_num_masked"])


def test_masking_keeps_leading_dims_and_draws_from_a_key(gen):
  _, io = gen
  n, k = io["head_target"].shape
  b = io["bits"].shape[0]
  rows = io["head_target"].reshape(b, n // b, k)
  masked, mask, ratio = mbm_mask_bits(rows, normal_draw=io["head_normal_draw"], uniform=io["head_uniform"])
  assert masked.shape == rows.shape and ratio.shape == (b, n // b)
  _close(mask.reshape(n, k), io["head_masks"], "head_masks")
  masked, mask, ratio = jax.jit(mbm_mask_bits)(jnp.asarray(rows), jax.random.key(0))
  counts = np.asarray(mask).sum(-1)
  np.testing.assert_array_equal(counts, np.asarray(mbm_num_masked(ratio, k)))
  assert np.all((counts >= 1) & (counts <= k))
  np.testing.assert_array_equal(np.asarray(masked), np.where(np.asarray(mask), 2, rows))
  with pytest.raises(ValueError):
    mbm_mask_bits(rows, normal_draw=io["head_normal_draw"])


def test_label_dropout(gen, fixture_configs):
  name, io = gen
  g = fixture_configs[name]["model"]["generator"]
  ids, dropped = drop_labels(io["labels"], drop_prob=g["class_label_dropout"], num_classes=g["condition_num_classes"],
                             target_codebook_size=g["target_codebook_size"], uniform=io["label_drop_uniform"])
  _close(dropped, io["label_drop_mask"], "label_drop_mask")
  _close(ids, io["condition_ids"], "condition_ids")
  null = null_condition_id(g["condition_num_classes"], target_codebook_size=g["target_codebook_size"])
  assert np.all(np.asarray(ids)[io["label_drop_mask"]] == null)


# ---------------------------------------------------------------------------
# MBM loss and its gradient


def _check_loss(io, prefix, logits, target, masks, loss_key, scalar=None):
  loss, aux = mbm_loss(logits, target, masks, return_aux=True)
  _close(aux["per_bit_ce"], io[f"{prefix}per_bit_ce"], f"{prefix}per_bit_ce")
  _close(aux["loss_weights"], io[f"{prefix}loss_weights"], f"{prefix}loss_weights", tol=dict(rtol=0, atol=0))
  _close(loss, io[loss_key], loss_key, tol=LOSS_TOL)
  if scalar is not None:
    np.testing.assert_allclose(float(loss), scalar, **LOSS_TOL)


def _analytic_grad(logits, target, masks):
  """float64 d loss / d logits = w / (sum w + eps) * (softmax - onehot)."""
  logits = np.asarray(logits, np.float64)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  onehot = np.eye(logits.shape[-1])[target]
  w = np.where(masks, 1.0, 0.1)
  return (w / (w.sum() + 1e-8))[..., None] * (p - onehot)


def test_head_fixture_loss_and_grad_wrt_logits(head, scalars):
  name, io = head
  _check_loss(io, "train_", io["train_logits"], io["train_target"], io["train_masks"], "train_loss",
              scalars.get(f"{name}__train_loss"))
  grad = jax.grad(mbm_loss)(jnp.asarray(io["train_logits"]), io["train_target"], io["train_masks"])
  _close(grad, _analytic_grad(io["train_logits"], io["train_target"], io["train_masks"]), "grad wrt logits",
         tol=dict(rtol=1e-5, atol=1e-7))


def test_generator_fixture_loss_and_grad_wrt_logits(gen, scalars):
  name, io = gen
  _check_loss(io, "head_", io["head_logits"], io["head_target"], io["head_masks"], "loss", scalars.get(f"{name}__loss"))
  grad = jax.jit(jax.grad(mbm_loss))(jnp.asarray(io["head_logits"]), io["head_target"], io["head_masks"])
  _close(grad, _analytic_grad(io["head_logits"], io["head_target"], io["head_masks"]), "grad wrt logits",
         tol=dict(rtol=1e-5, atol=1e-7))


def _bar_generator_api():
  try:
    import ml_collections

    from maskbit_jax.bar_config import bar_fields
    from maskbit_jax.convert.bar_mapping import bar_flax_to_torch_state, bar_param_mapping, bar_state_to_flax
    from maskbit_jax.models.bar_generator import abstract_bar_params, build_bar_module, gather_steps
    from maskbit_jax.models.bar_mbm_head import MBMHead
  except ImportError as e:  # the generator is another work item
    pytest.skip(f"the BAR generator modules are not available ({e})")
  return dict(ml_collections=ml_collections, bar_fields=bar_fields, bar_flax_to_torch_state=bar_flax_to_torch_state,
              bar_param_mapping=bar_param_mapping, bar_state_to_flax=bar_state_to_flax,
              abstract_bar_params=abstract_bar_params, build_bar_module=build_bar_module, gather_steps=gather_steps,
              MBMHead=MBMHead)


def test_head_fixture_grad_wrt_condition_through_the_head(head, golden, fixture_configs):
  """``train_grad_loss_wrt_z``: our masking and loss around the MBM head module."""
  api = _bar_generator_api()
  from flax import linen as nn

  from maskbit_jax.convert.checkpoint_files import read_state_dict
  from maskbit_jax.convert.param_mapping import torch_state_to_flax

  name, io = head
  kw = fixture_configs[name]
  module = api["MBMHead"](bits=kw["seq_len"], width=kw["width"], num_layers=kw["num_layers"],
                          num_classes=kw["target_codebook_size"])
  n, k = io["train_target"].shape
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((n, k), jnp.int32),
                                          jnp.zeros((n, 1, kw["width"])), jnp.zeros((n,)))["params"])
  params = torch_state_to_flax(read_state_dict(golden / f"{name}.bin"), abstract, api["bar_param_mapping"]())

  def loss_fn(z):
    masked, mask, ratio = mbm_mask_bits(io["train_target"], normal_draw=io["train_normal_draw"],
                                        uniform=io["train_uniform"])
    return mbm_loss(module.apply({"params": params}, masked, z, ratio), io["train_target"], mask)

  loss, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.asarray(io["z"]))
  _close(loss, io["train_loss"], "train_loss", tol=LOSS_TOL)
  _close(grad, io["train_grad_loss_wrt_z"], "train_grad_loss_wrt_z")


@pytest.mark.parametrize("name", _first_then_slow(_generator_names()))
def test_generator_fixture_loss_and_param_grads_through_the_model(name, golden, fixture_configs):
  """``loss`` and every ``grad.<param>``: the generator's backbone and head with our masking, loss and groups."""
  api = _bar_generator_api()
  from flax import linen as nn

  from maskbit_jax.convert.checkpoint_files import read_state_dict

  io = _load_npz(golden / f"{name}_io.npz")
  module = api["build_bar_module"](api["bar_fields"](api["ml_collections"].ConfigDict(fixture_configs[name])))
  abstract = nn.meta.unbox(api["abstract_bar_params"](module))
  params = jax.tree.map(jnp.asarray, api["bar_state_to_flax"](read_state_dict(golden / f"{name}.bin"), abstract,
                                                              module, source=f"{name}.bin"))
  bits, cond, orders = io["bits"], io["condition_ids"], io["orders"]
  b = bits.shape[0]

  def loss_fn(p):
    steps = module.apply({"params": p}, jnp.asarray(bits), method="steps_from_bits")
    steps = api["gather_steps"](steps, jnp.asarray(orders))       # [B, L, k] in generation order
    z = module.apply({"params": p}, steps, cond, orders, method="latent_conditions")[:, :-1]
    target = steps.reshape(-1, steps.shape[-1])                   # row b * L + i
    masked, mask, ratio = mbm_mask_bits(target, normal_draw=io["head_normal_draw"], uniform=io["head_uniform"])
    logits = module.apply({"params": p}, masked, z.reshape(target.shape[0], -1), ratio, method="head_logits")
    return mbm_loss(logits, target, mask), (target, mask, logits)

  (loss, (target, mask, logits)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  _close(target, io["head_target"], "head_target")
  _close(mask, io["head_masks"], "head_masks")
  _close(logits, io["head_logits"], "head_logits")
  _close(loss, io["loss"], "loss", tol=LOSS_TOL)
  torch_grads = api["bar_flax_to_torch_state"](grads, module)
  keys = [k for k in io if k.startswith("grad.")]
  assert keys and b > 0
  for key in keys:
    _close(torch_grads[key[len("grad."):]], io[key], key)
  # Only the reference's trainable parameters have gradients in the fixture, and our optimizer groups agree.
  # (decided per layer, on the PyTorch names; the scanned blocks' stacked leaves get their layer's label)
  mapping = api["bar_param_mapping"]()
  labels = traverse_util.flatten_dict(bar_optim.param_labels(mapping.per_layer(params), name_fn=mapping.torch_key))
  trainable = {mapping.torch_key(p) for p, lbl in labels.items() if lbl != bar_optim.FROZEN}
  assert trainable == {k[len("grad."):] for k in keys}
  stacked = bar_optim.param_labels(params, name_fn=mapping.torch_key, stacked_fn=mapping.is_stacked)
  codes = sorted(set(labels.values()))
  coded = mapping.per_layer(jax.tree.map(lambda x, lbl: np.full(x.shape, codes.index(lbl)), params, stacked))
  assert {p: codes[int(v.flat[0])] for p, v in traverse_util.flatten_dict(coded).items()} == labels


# ---------------------------------------------------------------------------
# Optimizer: weight-decay groups, frozen parameters, schedule, update rule


def _tree_from_names(shapes: dict) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split(".")): jax.ShapeDtypeStruct(tuple(s), jnp.float32)
                                       for k, s in shapes.items()})


def _groups(tree, **kw):
  labels = traverse_util.flatten_dict(bar_optim.param_labels(tree, **kw))
  out = {bar_optim.DECAY: [], bar_optim.NO_DECAY: [], bar_optim.FROZEN: []}
  for path, label in labels.items():
    out[label].append(".".join(path))
  return out


def test_weight_decay_groups_of_the_fixture_generators(gen, golden, scalars):
  name, _ = gen
  if f"{name}__weight_decay" not in scalars:
    pytest.skip("no weight-decay lists in scalars.json")
  state = _load_npz(golden / f"{name}_state.npz")
  listed = (scalars[f"{name}__weight_decay"] + scalars[f"{name}__no_weight_decay"]
            + scalars[f"{name}__not_optimised"])
  assert set(listed) <= set(state)
  groups = _groups(_tree_from_names({k: state[k].shape for k in state if k in listed}))
  assert groups[bar_optim.DECAY] == scalars[f"{name}__weight_decay"]
  assert groups[bar_optim.NO_DECAY] == scalars[f"{name}__no_weight_decay"]
  assert groups[bar_optim.FROZEN] == scalars[f"{name}__not_optimised"]


def test_weight_decay_groups_of_the_released_generators(manifest):
  _, m = manifest
  groups = _groups(_tree_from_names(m["params"]))
  assert groups[bar_optim.DECAY] == m["weight_decay_params"]
  assert groups[bar_optim.NO_DECAY] == m["no_weight_decay_params"]
  frozen_key = [k for k in m if k.startswith("not_in_optimizer")]
  assert frozen_key and groups[bar_optim.FROZEN] == m[frozen_key[0]]


def test_rule_is_on_pytorch_names():
  rule = bar_optim.no_weight_decay
  assert rule("blocks.0.adaLN_modulation.1.weight", 2)          # "ln" in the lower-cased name
  assert rule("lm_head.output_embed.weight", 2)
  assert not rule("cls_token", 3) and not rule("input_merge.weight", 2)
  assert rule("x.Bias_free", 1) and not rule("x.Bias_free", 2)   # "bias" is case-sensitive
  assert bar_optim.is_not_optimised("lm_head.t_embedder.W") and not bar_optim.is_not_optimised("W")
  name_fn = lambda path: "model." + ".".join(path)
  tree = {"cls_token": jnp.zeros((1, 1, 4))}
  assert bar_optim.weight_decay_mask(tree, name_fn=name_fn) == {"cls_token": True}


def test_lr_schedule_matches_reference_values(scalars, golden):
  keys = [k[:-len("__steps")] for k in scalars if k.startswith("lr_schedule_") and k.endswith("__steps")]
  if not keys:
    pytest.skip("no lr schedule samples in scalars.json")
  for key in keys:
    path = golden / "manifests" / f"{key[len('lr_schedule_'):]}.json"
    assert path.is_file(), f"{key}: no manifest {path.name} with the config"
    schedule = bar_optim.bar_schedule_from_config(json.loads(path.read_text()))
    ours = np.asarray([float(schedule(s)) for s in scalars[f"{key}__steps"]])
    np.testing.assert_allclose(ours, scalars[f"{key}__lr"], rtol=2e-6, atol=1e-12, err_msg=key)


def _torch_adamw_reference(params, grads_seq, lrs, *, b1, b2, eps, wd, decay, max_norm):
  """float64 torch.optim.AdamW + clip_grad_norm_ (per-parameter groups), for a few steps."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for step, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
    g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
    norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
    coef = min(1.0, max_norm / (norm + 1e-6))
    for k in p:
      gk = g[k] * coef
      p[k] = p[k] * (1 - lr * (wd if decay[k] else 0.0))
      m[k] = b1 * m[k] + (1 - b1) * gk
      v2[k] = b2 * v2[k] + (1 - b2) * gk * gk
      denom = np.sqrt(v2[k]) / np.sqrt(1 - b2 ** step) + eps
      p[k] = p[k] - lr / (1 - b1 ** step) * m[k] / denom
  return p


def test_optimizer_update_matches_torch_adamw_with_groups():
  rng = np.random.default_rng(0)
  params = {"cls_token": rng.normal(size=(1, 1, 4)), "blocks": {"0": {
      "attn": {"qkv": {"kernel": rng.normal(size=(4, 12)), "bias": rng.normal(size=(12,))}},
      "adaLN_modulation_1": {"kernel": rng.normal(size=(4, 24))}}},
      "lm_head": {"t_embedder": {"W": rng.normal(size=(8,))}}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  settings = dict(learning_rate=1e-2, warmup_steps=2, total_steps=10, end_lr=1e-3, beta1=0.9, beta2=0.96,
                  weight_decay=0.5, max_grad_norm=0.7)
  tx = bar_optim.make_bar_optimizer(**settings)
  schedule = bar_optim.bar_lr_schedule(1e-2, 2, 10, 1e-3)
  state = tx.init(params)
  grads_seq = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 3, jnp.float32), params)
               for _ in range(4)]
  # The frozen parameter's gradient is huge: it must neither move it nor enter the clipping norm.
  grads_seq = [dict(g, lm_head={"t_embedder": {"W": jnp.full((8,), 1e6, jnp.float32)}}) for g in grads_seq]
  p = params
  for g in grads_seq:
    updates, state = jax.jit(tx.update)(g, state, p)
    p = optax.apply_updates(p, updates)
  flat = {".".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  decay = {k: not bar_optim.no_weight_decay(k, v.ndim) for k, v in flat.items()}
  trainable = [k for k in flat if not bar_optim.is_not_optimised(k)]
  expect = _torch_adamw_reference(
      {k: flat[k] for k in trainable},
      [{k: v for k, v in ((".".join(k2), x) for k2, x in traverse_util.flatten_dict(g).items()) if k in trainable}
       for g in grads_seq],
      [float(schedule(i)) for i in range(len(grads_seq))], b1=0.9, b2=0.96, eps=1e-8, wd=0.5, decay=decay,
      max_norm=0.7)
  ours = {".".join(k): v for k, v in traverse_util.flatten_dict(p).items()}
  for k in trainable:
    np.testing.assert_allclose(np.asarray(ours[k]), expect[k], rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_array_equal(np.asarray(ours["lm_head.t_embedder.W"]), np.asarray(flat["lm_head.t_embedder.W"]))
  assert decay["cls_token"] and not decay["blocks.0.adaLN_modulation_1.kernel"]


def test_optimizer_from_config_and_encoder_lr_groups(manifest):
  _, m = manifest
  settings = bar_optim.bar_optimizer_settings(m)
  assert settings["learning_rate"] == m["optimizer"]["params"]["learning_rate"]
  assert settings["weight_decay"] == m["optimizer"]["params"]["weight_decay"]
  assert settings["warmup_steps"] == m["lr_scheduler"]["params"]["warmup_steps"]
  assert settings["total_steps"] == m["training"]["max_train_steps"]
  assert settings["max_grad_norm"] == m["training"]["max_grad_norm"]
  assert settings["encoder_lr_mult"] == 1.0  # generator configs have none
  assert bar_optim.param_label("encoder.layers.0.fc1.weight", 2, encoder_lr_mult=0.1) == "decay_encoder"
  assert bar_optim.param_label("encoder.layers.0.fc1.bias", 1, encoder_lr_mult=0.1) == "no_decay_encoder"
  tx = bar_optim.make_bar_optimizer(learning_rate=1.0, warmup_steps=0, total_steps=10, end_lr=0.1, weight_decay=0.0,
                                    max_grad_norm=None, encoder_lr_mult=0.1)
  params = {"encoder": {"w": jnp.ones((2, 2))}, "decoder": {"w": jnp.ones((2, 2))}}
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["encoder"]["w"]), 0.1 * np.asarray(updates["decoder"]["w"]),
                             rtol=1e-6)


def test_gradient_accumulation_steps_once_per_k():
  tx = bar_optim.make_bar_optimizer(learning_rate=1.0, warmup_steps=0, total_steps=10, end_lr=0.1,
                                    gradient_accumulation_steps=2)
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  u1, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  u2, state = tx.update({"w": 3 * jnp.ones((2, 2))}, state, params)
  assert float(jnp.abs(u1["w"]).max()) == 0.0 and float(jnp.abs(u2["w"]).max()) > 0.0


# ---------------------------------------------------------------------------
# RAR random-order annealing


def test_tokenizer_training_groups():
  frozen = bar_optim.bar_tokenizer_not_optimised
  assert frozen("encoder.siglip.encoder.layers.0.mlp.fc1.weight") and frozen("encoder.siglip.head.probe")
  assert not frozen("encoder.trainable_encoder.layers.0.mlp.fc1.weight") and not frozen("decoder.conv_out.weight")
  label = lambda name, ndim: bar_optim.param_label(name, ndim, encoder_lr_mult=0.1, frozen_fn=frozen)
  assert label("encoder.trainable_encoder.layers.0.mlp.fc1.weight", 2) == "decay_encoder"
  assert label("encoder.trainable_post_layernorm.weight", 1) == "no_decay_encoder"
  assert label("quantize.in_proj.weight", 2) == bar_optim.DECAY
  assert label("encoder.siglip.embeddings.patch_embedding.weight", 2) == bar_optim.FROZEN


def test_rar_random_ratio_schedule(manifest):
  _, m = manifest
  g = m["config"]["generator"]
  start, end = g["randomness_anneal_start"], g["randomness_anneal_end"]
  steps = [0, start - 1, start, (start + end) // 2, end, end + 1]
  expect = [1.0, 1.0, 1.0, 1.0 - ((start + end) // 2 - start) / (end - start), 0.0, 0.0]
  ours = [float(rar_random_ratio(s, start, end)) for s in steps]
  np.testing.assert_allclose(ours, expect, rtol=1e-6)
  assert float(rar_random_ratio(5, -1, -1)) == 0.0  # the reference's raster-only setting


def test_sample_orders():
  b, n = 4, 9
  u = jax.random.uniform(jax.random.key(1), (b, n))
  choice = jnp.asarray([0.1, 0.5, 0.9, 0.3])
  orders = sample_orders(None, b, n, 0.4, order_uniform=u, choice_uniform=choice)
  expect_random = np.argsort(np.asarray(u), axis=-1)
  for row, random in enumerate(np.asarray(choice) < 0.4):
    np.testing.assert_array_equal(np.asarray(orders[row]), expect_random[row] if random else np.arange(n))
  orders = sample_orders(jax.random.key(2), b, n, 1.0)
  assert np.all(np.sort(np.asarray(orders), -1) == np.arange(n))
  np.testing.assert_array_equal(np.asarray(sample_orders(jax.random.key(3), b, n, 0.0)),
                                np.broadcast_to(np.arange(n), (b, n)))
