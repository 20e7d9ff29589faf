"""Shared test fixtures: the golden fixture folder and layout helpers.

The golden folders come from ``MASKBIT_GOLDEN`` / ``MASKBIT_GOLDEN_BAR`` (default: the copies
committed under ``tests/fixtures/``, see its README). Tests take every config, shape and case from the
fixture files, so they run unchanged on fixture sets made with other seeds.
"""

from __future__ import annotations

import json
import os

# Tests see 8 simulated CPU devices (sharding tests); must precede the jax import.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
import pathlib

# Parity is checked at float32 "highest" matmul/conv precision on every backend: a no-op on CPU,
# and on GPUs it stops XLA from taking TF32 for float32 products (set the variable to override).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

# One persistent XLA compilation cache for the test processes (and the CLIs they start): the tiny
# models' programs compile once per suite instead of once per test (tens of seconds each on CPU).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


FIXTURES = REPO / "tests" / "fixtures"


def golden_path() -> pathlib.Path:
  """The MaskBit fixture folder: ``MASKBIT_GOLDEN`` (default the committed ``tests/fixtures/golden``)."""
  return pathlib.Path(os.environ.get("MASKBIT_GOLDEN", FIXTURES / "golden")).resolve()


def golden_bar_path() -> pathlib.Path:
  """The BAR fixture folder: ``MASKBIT_GOLDEN_BAR`` (default the committed ``tests/fixtures/golden_bar``)."""
  return pathlib.Path(os.environ.get("MASKBIT_GOLDEN_BAR", FIXTURES / "golden_bar")).resolve()


def require_folder(path: pathlib.Path, marker: str, what: str, env: str) -> pathlib.Path:
  """``path`` if it holds ``marker``; otherwise skip (fail under CI) with a message naming ``env``."""
  if not (path / marker).exists():
    message = f"{what} not found at {path} (set {env})"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def golden_bar() -> pathlib.Path:
  return require_folder(golden_bar_path(), "fixture_configs.json", "BAR golden fixtures", "MASKBIT_GOLDEN_BAR")


@pytest.fixture(scope="session")
def golden() -> pathlib.Path:
  path = golden_path()
  if not (path / "fixture_configs.json").is_file():
    message = f"golden fixtures not found at {path} (set MASKBIT_GOLDEN)"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def fixture_configs(golden) -> dict:
  with open(golden / "fixture_configs.json") as f:
    return json.load(f)


def nhwc(x: np.ndarray) -> np.ndarray:
  """PyTorch NCHW -> our NHWC."""
  return np.transpose(x, (0, 2, 3, 1))


def load_npz(path) -> dict:
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def tokenizer_config(fixture_configs, name: str) -> dict:
  """A full config (reference nesting) around the fixture's ``vq_model`` section."""
  return {"model": {"vq_model": dict(fixture_configs["configs"][name])}}


def assert_trees_equal(a, b):
  """Every leaf of ``a`` and ``b`` bit for bit (PRNG keys by their data)."""
  import jax

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def restored_state(workdir) -> tuple[int, dict, dict]:
  """``(step, state, meta)`` of the latest checkpoint of a train run's ``workdir``, restored without a target."""
  import orbax.checkpoint as ocp

  from maskbit_jax.train import checkpoints

  mgr = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  step = mgr.latest_step()
  out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  mgr.close()
  return step, out["state"], out["meta"]


def task_on_token_set(config: str, token_set, tmp_path):
  """The train task of ``configs/<config>`` (one device, batch 8) on the pretokenized ``token_set``, with the
  tiny tokenizer's random weights saved as its frozen tokenizer (a stage-I export)."""
  import jax

  import maskbit_jax
  from maskbit_jax import checkpointing, sharding
  from maskbit_jax.train.tasks import make_task

  tok = maskbit_jax.load_tokenizer(str(REPO / "configs/tokenizer_tiny.py"), random_init=True)
  tok_dir = tmp_path / "tokenizer"
  checkpointing.save_params(tok_dir, tok.params, kind="tokenizer", config=tok.config.to_dict())
  cfg = maskbit_jax.load_config(str(REPO / "configs" / config), [
      f"--config.dataset.pretokenized={token_set}", f"--config.experiment.vqgan_checkpoint={tok_dir}",
      "--config.training.global_batch_size=8", "--config.runtime.num_devices=1"])
  return make_task(cfg, sharding.create_mesh({"data": -1}, jax.devices()[:1]), str(tmp_path / "run"))


def drop_simulated_devices(env: dict) -> dict:
  """``env`` without the tests' simulated-device XLA flag: a subprocess or kernel runs on one CPU device."""
  import re

  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  return env


def expected_spec(names, shape, mesh) -> tuple:
  """The mesh axes the rules table gives a parameter with logical ``names``: ``sharding.RULES``, an axis left
  replicated where its mesh size does not divide the dimension. Written out here, not taken from
  ``sharding.logical_to_sharding``, so the sharding tests check that function."""
  from flax import linen as nn

  from maskbit_jax import sharding

  spec = nn.logical_to_mesh_axes(names, sharding.RULES)
  return tuple(a if a is None or dim % sharding._axis_size(mesh, a) == 0 else None for a, dim in zip(spec, shape))


def bar_tokenizer_config(fixture_configs: dict, name: str) -> dict:
  """A golden_bar tokenizer's reference config plus the port-only sections for the offline stand-ins it was
  built with (``fixture_configs.json`` of ``MASKBIT_GOLDEN_BAR``)."""
  cfg = json.loads(json.dumps(fixture_configs[name]))
  cfg["model"]["siglip2"] = fixture_configs[f"{name}_siglip2_vision_config"]
  cfg["model"]["vit_decoder"] = fixture_configs[f"{name}_decoder_overrides"]
  return cfg


def pytest_collection_modifyitems(config, items):
  """``slow`` tests run only when selected (``pytest -m slow``); the default suite skips them."""
  if "slow" in (config.getoption("markexpr") or ""):
    return
  skip = pytest.mark.skip(reason="slow: run with -m slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
