"""ResNet50 perceptual loss, LPIPS (VGG16 + linear heads) and its antialiased resize (``torch_resize``) against
the golden fixtures.

Weights: the recipe weights of ``recipe_manifests/{resnet50,vgg16}.json`` rebuilt
with numpy; the LPIPS heads are the real ones, stored in
``perceptual_recipe_io.npz`` as ``lpips_lin<k>.model.1.weight`` (golden README
section 6). Cases:
* ``perceptual_recipe_io.npz``: ``x``/``y`` -> ``resnet50_logits_x`` (logits of the
  resized, normalised ``x``), ``resnet50_logits_loss``, ``lpips_xy``,
  ``lpips_vgg_x_relu_<i>_mean_over_hw``;
* ``losses.npz``: ``inputs``/``reconstructions`` (the tokenizer loss's pair) ->
  ``perceptual_resnet50_logits_inputs``, ``perceptual_resnet50_{logits,features}_loss``,
  ``lpips_value``; ``resize_input_u8`` -> ``resize_224_antialias``;
* ``metrics.npz`` (if present): ``recon_real``/``recon_fake`` -> ``recon_lpips_per_sample``.
Tolerances (README section 8): 1e-5 for losses and logits, 1e-4 for images and
feature maps.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from conftest import load_npz, nhwc
from maskbit_jax import sharding, torch_resize
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.lpips_mapping import lpips_param_mapping
from maskbit_jax.convert.param_mapping import CheckpointMismatchError, expected_torch_shapes, torch_state_to_flax
from maskbit_jax.convert.resnet50_mapping import resnet50_param_mapping
from maskbit_jax.losses import perceptual
from maskbit_jax.models import resnet50 as resnet50_lib
from maskbit_jax.models import vgg_lpips
from recipe_weights import recipe_state_dict

IMAGE_TOL = dict(rtol=1e-4, atol=1e-4)
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)
HIGHEST = jax.lax.Precision.HIGHEST  # float32 convs/matmuls on GPU/TPU too
LPIPS_HEAD_PREFIX = "lpips_"


def _manifest_shapes(golden, net: str) -> "OrderedDict[str, tuple[int, ...]]":
  manifest = json.loads((golden / "recipe_manifests" / f"{net}.json").read_text())
  return OrderedDict((key, tuple(shape)) for key, shape in manifest["keys"])


def _stored_lpips_heads(io: dict) -> "OrderedDict[str, np.ndarray]":
  heads = OrderedDict((k[len(LPIPS_HEAD_PREFIX):], v) for k, v in io.items()
                      if k.startswith(LPIPS_HEAD_PREFIX + "lin"))
  assert heads, "perceptual_recipe_io.npz holds no lpips_lin* heads"
  return heads


@pytest.fixture(scope="module")
def perceptual_io(golden):
  return load_npz(golden / "perceptual_recipe_io.npz")


@pytest.fixture(scope="module")
def losses_io(golden):
  return load_npz(golden / "losses.npz")


@pytest.fixture(scope="module")
def resnet50_state(golden):
  return recipe_state_dict(golden / "recipe_manifests" / "resnet50.json")


@pytest.fixture(scope="module")
def resnet50(resnet50_state):
  model = resnet50_lib.ResNet50(precision=HIGHEST)
  abstract = resnet50_lib.abstract_resnet50_variables(model)
  variables = jax.tree.map(jnp.asarray, torch_state_to_flax(resnet50_state, abstract,
                                                              resnet50_param_mapping()))
  outputs = jax.jit(lambda v, x: perceptual.resnet50_perceptual_outputs(v, x, model=model))
  loss = jax.jit(lambda v, a, b, on_logits: perceptual.resnet50_perceptual_loss(v, a, b, on_logits=on_logits,
                                                                                 model=model),
                 static_argnums=3)
  return variables, outputs, loss


@pytest.fixture(scope="module")
def lpips_state(golden, perceptual_io):
  state = recipe_state_dict(golden / "recipe_manifests" / "vgg16.json")
  state.update(_stored_lpips_heads(perceptual_io))
  return state


@pytest.fixture(scope="module")
def lpips(lpips_state):
  model = vgg_lpips.LPIPS(precision=HIGHEST)
  abstract = vgg_lpips.abstract_lpips_variables(model)
  params = torch_state_to_flax(lpips_state, abstract["params"], lpips_param_mapping())
  variables = {"params": jax.tree.map(jnp.asarray, params)}
  distance = jax.jit(lambda v, a, b: model.apply(v, a, b))
  taps = jax.jit(lambda v, a: model.apply(v, a, method="features"))
  return variables, distance, taps


# ----------------------------------------------------------------------------- resize


def test_antialiased_resize_matches_torch(losses_io):
  images = nhwc(losses_io["resize_input_u8"]).astype(np.float32) / np.float32(255)
  want = nhwc(losses_io["resize_224_antialias"])
  got = torch_resize.resize(images, tuple(want.shape[1:3]), "bilinear_aa")
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, **IMAGE_TOL)
  if want.shape[1] == want.shape[2]:  # torch's `size=224` form
    np.testing.assert_array_equal(np.asarray(torch_resize.resize(images, want.shape[1], "bilinear_aa")),
                                  np.asarray(got))


def test_antialiased_resize_agrees_with_jax_image_resize(losses_io):
  """Independent check: jax's antialiased triangle filter, down- and up-sampling, non-square."""
  images = nhwc(losses_io["resize_input_u8"]).astype(np.float32) / np.float32(255)
  b, h, w, c = images.shape
  for size in [(h // 3 + 1, w + 9), (h, w)]:
    want = jax.image.resize(images, (b, *size, c), method="linear", antialias=True)
    np.testing.assert_allclose(np.asarray(torch_resize.resize(images, size, "bilinear_aa")), np.asarray(want),
                               err_msg=str(size), **IMAGE_TOL)


# ----------------------------------------------------------------------------- mappings


def _assert_one_to_one(mapping, abstract, want: "OrderedDict[str, tuple[int, ...]]"):
  n_leaves = len(traverse_util.flatten_dict(abstract)) + len(mapping.buffers)
  got = expected_torch_shapes(mapping, abstract)
  assert len(got) == n_leaves, "two flax leaves map onto one PyTorch key"
  assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
  assert dict(got) == dict(want)


def test_resnet50_mapping_covers_manifest_one_to_one(golden):
  abstract = resnet50_lib.abstract_resnet50_variables()
  _assert_one_to_one(resnet50_param_mapping(), abstract, _manifest_shapes(golden, "resnet50"))


def test_lpips_mapping_covers_manifest_and_heads_one_to_one(golden, perceptual_io):
  want = _manifest_shapes(golden, "vgg16")
  want.update((k, tuple(v.shape)) for k, v in _stored_lpips_heads(perceptual_io).items())
  abstract = vgg_lpips.abstract_lpips_variables()["params"]
  _assert_one_to_one(lpips_param_mapping(), abstract, want)


def test_logical_axis_names_are_known():
  known = {name for name, _ in sharding.RULES}
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  for boxed in (jax.eval_shape(resnet50_lib.ResNet50().init, jax.random.PRNGKey(0), x)["params"],
                jax.eval_shape(vgg_lpips.LPIPS().init, jax.random.PRNGKey(0), x, x)["params"]):
    leaves = jax.tree.leaves(boxed, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))
    assert all(isinstance(l, nn.LogicallyPartitioned) for l in leaves)
    assert {n for l in leaves for n in l.names} <= known


def test_resnet50_strict_conversion_names_problems(resnet50_state):
  abstract = resnet50_lib.abstract_resnet50_variables()
  mapping = resnet50_param_mapping()
  state = OrderedDict(resnet50_state)
  dropped = next(k for k in state if k.endswith("running_var"))
  del state[dropped]
  state["fc.weight"] = state["fc.weight"][:, :-1]
  state["extra.weight"] = np.zeros(1, np.float32)
  with pytest.raises(CheckpointMismatchError) as err:
    torch_state_to_flax(state, abstract, mapping)
  for name in (dropped, "fc.weight", "extra.weight"):
    assert name in str(err.value)


# ----------------------------------------------------------------------------- ResNet50 perceptual loss


def test_resnet50_logits_and_loss_on_recipe_pair(resnet50, perceptual_io):
  variables, outputs, loss = resnet50
  x, y = nhwc(perceptual_io["x"]), nhwc(perceptual_io["y"])
  out = outputs(variables, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(out["logits"]), perceptual_io["resnet50_logits_x"], **LOSS_TOL)
  np.testing.assert_allclose(np.asarray(out["pooled"]), np.asarray(out["layer4"]).mean(axis=(1, 2)), **IMAGE_TOL)
  np.testing.assert_allclose(float(loss(variables, x, y, True)), float(perceptual_io["resnet50_logits_loss"]),
                             **LOSS_TOL)


def test_resnet50_perceptual_losses_on_tokenizer_pair(resnet50, losses_io):
  variables, outputs, loss = resnet50
  inputs, recons = nhwc(losses_io["inputs"]), nhwc(losses_io["reconstructions"])
  out = outputs(variables, jnp.asarray(inputs))
  np.testing.assert_allclose(np.asarray(out["logits"]), losses_io["perceptual_resnet50_logits_inputs"], **LOSS_TOL)
  for on_logits, key in [(True, "perceptual_resnet50_logits_loss"), (False, "perceptual_resnet50_features_loss")]:
    np.testing.assert_allclose(float(loss(variables, inputs, recons, on_logits)), float(losses_io[key]),
                               err_msg=key, **LOSS_TOL)


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_taps_and_distance_on_recipe_pair(lpips, perceptual_io):
  variables, distance, taps = lpips
  x, y = nhwc(perceptual_io["x"]), nhwc(perceptual_io["y"])
  features = taps(variables, x)
  assert len(features) == len(vgg_lpips.TAP_NAMES)
  for i, tap in enumerate(features):
    np.testing.assert_allclose(np.asarray(tap).mean(axis=(1, 2)), perceptual_io[f"lpips_vgg_x_relu_{i}_mean_over_hw"],
                               err_msg=vgg_lpips.TAP_NAMES[i], **IMAGE_TOL)
  want = perceptual_io["lpips_xy"].reshape(-1)
  got = distance(variables, x, y)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, **LOSS_TOL)
  np.testing.assert_allclose(np.asarray(distance(variables, y, x)), want, **LOSS_TOL)


def test_normalize_channels_values_and_zero_gradient():
  f = np.zeros((1, 2, 1, 4), np.float32)
  f[0, 0, 0] = [3.0, 0.0, 4.0, 0.0]  # second position: all channels zero
  out = vgg_lpips.normalize_channels(jnp.asarray(f))
  np.testing.assert_allclose(np.asarray(out)[0, 0, 0], f[0, 0, 0] / (5.0 + vgg_lpips.NORMALIZE_EPS), rtol=1e-7)
  np.testing.assert_array_equal(np.asarray(out)[0, 1, 0], 0.0)
  grad = jax.grad(lambda x: jnp.sum(vgg_lpips.normalize_channels(x) * jnp.arange(4.0)))(jnp.asarray(f))
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_lpips_on_tokenizer_pair(lpips, losses_io):
  variables, distance, _ = lpips
  got = distance(variables, nhwc(losses_io["inputs"]), nhwc(losses_io["reconstructions"]))
  np.testing.assert_allclose(np.asarray(got), losses_io["lpips_value"].reshape(-1), **LOSS_TOL)


def test_lpips_on_evaluator_pair(lpips, golden):
  path = golden / "metrics.npz"
  if not path.is_file():
    pytest.skip("no metrics.npz in this fixture set")
  io = load_npz(path)
  if "recon_lpips_per_sample" not in io:
    pytest.skip("metrics.npz has no recon_lpips_per_sample")
  variables, distance, _ = lpips
  got = distance(variables, nhwc(io["recon_real"]), nhwc(io["recon_fake"]))
  np.testing.assert_allclose(np.asarray(got), io["recon_lpips_per_sample"].reshape(-1), **LOSS_TOL)


def test_real_lpips_heads_equal_stored_ones(perceptual_io):
  """Only where a copy of the reference's pretrained/vgg_lpips.pth is named by MASKBIT_LPIPS_HEADS."""
  path = os.environ.get("MASKBIT_LPIPS_HEADS")
  if not path or not os.path.isfile(path):
    pytest.skip("MASKBIT_LPIPS_HEADS (the reference's pretrained/vgg_lpips.pth) not given")
  real = read_state_dict(path)
  stored = _stored_lpips_heads(perceptual_io)
  assert list(real) == list(stored)
  for key in stored:
    np.testing.assert_array_equal(real[key], stored[key], err_msg=key)


# ----------------------------------------------------------------------------- loaders


def test_loaders_name_the_missing_file(tmp_path):
  missing = tmp_path / "nowhere" / "resnet50-0676ba61.pth"
  with pytest.raises(FileNotFoundError, match="resnet50-0676ba61.pth.*ResNet50"):
    perceptual.load_resnet50_params(missing)
  heads = tmp_path / "vgg_lpips.pth"
  with pytest.raises(FileNotFoundError, match="vgg_lpips.pth.*pretrained/vgg_lpips.pth"):
    perceptual.load_lpips_params(heads)
  np.savez(heads.with_suffix(".npz"), **{"lin0.model.1.weight": np.zeros((1, 64, 1, 1), np.float32)})
  with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth.*VGG16"):
    perceptual.load_lpips_params(heads.with_suffix(".npz"), tmp_path / "vgg16-397923af.pth")


def test_load_resnet50_params_from_file(tmp_path, resnet50, resnet50_state):
  variables = resnet50[0]
  # An older torchvision file: no num_batches_tracked counters (torch fills them in as 0 as well).
  state = {k: v for k, v in resnet50_state.items() if not k.endswith("num_batches_tracked")}
  path = tmp_path / "resnet50.npz"
  np.savez(path, **state)
  loaded = perceptual.load_resnet50_params(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # Non-zero counters (a trained file) are accepted: an inference-mode BatchNorm never reads them.
  state = dict(resnet50_state, **{"bn1.num_batches_tracked": np.asarray(7, np.int64)})
  np.savez(path, **state)
  jax.tree.map(np.testing.assert_array_equal, perceptual.load_resnet50_params(path), variables)


def test_load_lpips_params_from_files(tmp_path, lpips, lpips_state):
  params = lpips[0]
  heads = OrderedDict((k, v) for k, v in lpips_state.items() if k.startswith("lin"))
  trunk = OrderedDict((k, v) for k, v in lpips_state.items() if k.startswith("features."))
  np.savez(tmp_path / "heads.npz", **heads)
  # A torchvision file also carries the classifier, which LPIPS never uses.
  np.savez(tmp_path / "vgg16.npz", **trunk, **{"classifier.6.bias": np.zeros(1000, np.float32)})
  loaded = perceptual.load_lpips_params(tmp_path / "heads.npz", tmp_path / "vgg16.npz")
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  with pytest.raises(CheckpointMismatchError, match="trunk_path"):
    perceptual.load_lpips_params(tmp_path / "heads.npz")
  # The reference LPIPS module's own state dict: net.slice<s>.<i>.* names and the scaling buffers.
  module_state = OrderedDict()
  module_state["scaling_layer.shift"] = vgg_lpips.LPIPS_SHIFT[None, :, None, None]
  module_state["scaling_layer.scale"] = vgg_lpips.LPIPS_SCALE[None, :, None, None]
  slice_starts = (0, 4, 9, 16, 23)  # reference vgg16: slice<s> holds features[start_s : start_{s+1}]
  for key, value in trunk.items():
    index = int(key.split(".")[1])
    s = sum(start <= index for start in slice_starts)
    module_state[f"net.slice{s}.{key.split('.', 1)[1]}"] = value
  module_state.update(heads)
  np.savez(tmp_path / "lpips_module.npz", **module_state)
  jax.tree.map(np.testing.assert_array_equal, perceptual.load_lpips_params(tmp_path / "lpips_module.npz"), params)
