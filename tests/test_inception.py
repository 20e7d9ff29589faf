"""The FID/IS InceptionV3 against ``inception_recipe_io.npz`` (recipe weights rebuilt in numpy).

The reference runs the extractor in float64, so the parity tests run ours in
float64 too, inside ``jax.enable_x64(True)`` (a context manager: the rest of the
pytest process keeps the default float32).

Tolerances:
* float64 features ('64', '192', '2048', 'logits_unbiased', 'logits'):
  rtol 1e-10, atol 1e-12. Observed: at most 4e-15 absolute on values up to ~4.7
  (only the summation order of the convolutions differs), so ~250x margin.
* '768' (the reference returns it as float32): rtol = atol = 1e-6, i.e. a few
  float32 ulps at its largest value 3.75 (observed: bit-identical).
* TF1 resize: computed in float64 as the reference does, cast to float32 for
  the stored 299 case (observed: bit-identical; we allow 2 ulps), exact to 1e-12
  for the small float64 case.
* float32 module (not the reference's mode): rtol = atol = 1e-5, the package's
  logits tolerance (observed: 2.9e-6 absolute).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_npz, nhwc
from maskbit_jax.convert.checkpoint_files import write_state_dict
from maskbit_jax.convert.param_mapping import CheckpointMismatchError, expected_torch_shapes
from maskbit_jax.evaluation.inception import (FEATURES, InceptionV3, abstract_inception_variables,
                                              inception_param_mapping, inception_variables_from_state,
                                              inception_variables_to_state, load_inception_params,
                                              tf1_bilinear_resize)
from recipe_weights import recipe_state_dict

F64_TOL = dict(rtol=1e-10, atol=1e-12)
F32_OUT_TOL = dict(rtol=1e-6, atol=1e-6)
F32_MODEL_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def manifest_path(golden):
  return golden / "recipe_manifests" / "inception.json"


@pytest.fixture(scope="module")
def recipe(manifest_path):
  return recipe_state_dict(manifest_path)


@pytest.fixture(scope="module")
def io(golden):
  return load_npz(golden / "inception_recipe_io.npz")


@pytest.fixture(scope="module")
def variables(recipe):
  return jax.tree.map(jnp.asarray, inception_variables_from_state(recipe, source="recipe"))


def test_features_float64_match_reference(variables, io):
  with jax.enable_x64(True):
    model = InceptionV3(dtype=jnp.float64)
    out = jax.jit(model.apply)(variables, jnp.asarray(nhwc(io["inception_input_u8"])))
    out = jax.tree.map(np.asarray, out)
  assert set(out) == set(FEATURES)
  for name in FEATURES:
    ref = io[f"inception_{name}"]
    assert out[name].shape == ref.shape, name
    assert out[name].dtype == ref.dtype, name  # float64, except '768' (float32 as the reference)
    tol = F32_OUT_TOL if ref.dtype == np.float32 else F64_TOL
    np.testing.assert_allclose(out[name], ref, err_msg=name, **tol)


def test_features_float32_mode(variables, io):
  out = jax.jit(InceptionV3().apply)(variables, jnp.asarray(nhwc(io["inception_input_u8"])))
  for name in FEATURES:
    assert out[name].dtype == jnp.float32, name
    np.testing.assert_allclose(np.asarray(out[name]), io[f"inception_{name}"], err_msg=name, **F32_MODEL_TOL)


def test_tf1_resize_299(io):
  images = nhwc(io["tf1_resize_input_u8"])
  ref = nhwc(io["tf1_resize_299"])
  with jax.enable_x64(True):
    out = np.asarray(tf1_bilinear_resize(jnp.asarray(images, jnp.float64), ref.shape[1:3]))
  np.testing.assert_allclose(out.astype(np.float32), ref, rtol=2.5e-7, atol=1e-12)
  # In float32 the sample positions round differently (up to ~5e-4 on values up to 255).
  out32 = tf1_bilinear_resize(jnp.asarray(images, jnp.float32), ref.shape[1])
  assert out32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out32), ref, rtol=0, atol=2e-3)


def test_tf1_resize_small_float64(io):
  images = nhwc(io["tf1_resize_small_input_f64"])
  ref = nhwc(io["tf1_resize_small_out_13x5_f64"])
  with jax.enable_x64(True):
    out = tf1_bilinear_resize(jnp.asarray(images), ref.shape[1:3])
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-12, atol=1e-12)


def test_tf1_resize_is_not_half_pixel():
  # TF1 legacy: output i samples input i * in / out; a 2 -> 4 ramp gives 0, .5, 1, 1.
  x = jnp.asarray([0.0, 1.0]).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(np.asarray(tf1_bilinear_resize(x, (1, 4)))[0, 0, :, 0], [0.0, 0.5, 1.0, 1.0])


def test_manifest_maps_one_to_one(manifest_path):
  manifest = json.loads(manifest_path.read_text())["keys"]
  expected = expected_torch_shapes(inception_param_mapping(), abstract_inception_variables())
  want = {key: tuple(shape) for key, shape in manifest}
  assert len(want) == len(manifest) == len(expected)
  assert set(expected) == set(want)
  for key, shape in want.items():
    assert expected[key] == shape, key
  abstract = abstract_inception_variables()
  assert set(abstract) == {"params", "batch_stats"}


def test_converter_is_strict(recipe):
  broken = dict(recipe)
  del broken["Mixed_6b.branch7x7_2.conv.weight"]
  broken["Mixed_7c.branch_pool.bn.running_var"] = np.ones(7, np.float32)
  broken["fc.extra"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointMismatchError) as err:
    inception_variables_from_state(broken)
  message = str(err.value)
  for needle in ("Mixed_6b.branch7x7_2.conv.weight", "Mixed_7c.branch_pool.bn.running_var", "fc.extra"):
    assert needle in message


def test_file_round_trip_without_batch_counters(recipe, variables, tmp_path):
  # torch-fidelity's weight file has no num_batches_tracked entries; pytorch-fid's may.
  state = {k: v for k, v in recipe.items() if not k.endswith("num_batches_tracked")}
  path = tmp_path / "weights-inception.safetensors"
  write_state_dict(path, state)
  loaded = load_inception_params(path)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  back = inception_variables_to_state(loaded)
  assert set(back) == set(recipe)
  for key, value in recipe.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_missing_weights_file(tmp_path):
  path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
    load_inception_params(path)


@pytest.mark.parametrize("shape,dtype", [((2, 64, 64), jnp.uint8), ((2, 64, 64, 1), jnp.uint8),
                                         ((2, 3, 64, 64), jnp.uint8), ((2, 64, 64, 3), jnp.int32)])
def test_bad_input_raises(shape, dtype):
  abstract = abstract_inception_variables()
  with pytest.raises(ValueError):
    jax.eval_shape(InceptionV3().apply, abstract, jax.ShapeDtypeStruct(shape, dtype))


def test_float64_without_x64_raises():
  abstract = abstract_inception_variables()
  with pytest.raises(ValueError, match="x64"):
    jax.eval_shape(InceptionV3(dtype=jnp.float64).apply, abstract, jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.uint8))
