"""The Colab notebooks (colab/*.ipynb): committed without outputs, and each runs top to bottom.

Each notebook is executed with nbclient in a fresh IPython kernel of this interpreter, on the
tiny configs (``MASKBIT_NB_FAST=1``, which the notebooks' parameters cells read) with a few
steps; a cell injected after the "parameters" cell points the outputs at a temporary folder and names
released weights, which resolve against a stand-in hub on 127.0.0.1 serving the golden tiny checkpoints
(``test_weights_registry.tiny_release``; the kernel's HF_ENDPOINT, HF_HOME and MASKBIT_WEIGHTS_REGISTRY).
A cell error fails the test with the cell's traceback; the key outputs (printed lines, displayed images, written PNGs) are checked.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from conftest import REPO, drop_simulated_devices  # noqa: E402
from test_weights_registry import StandIn, hub_env, tiny_release  # noqa: E402

COLAB = REPO / "colab"
NOTEBOOKS = ("tokenizer", "maskbit_sampling", "bar_sampling", "train_tiny")
KERNEL = "maskbit-jax-tests"
RANDOM_NOTICE = "using RANDOM (untrained) weights"


def _read(name: str):
  path = COLAB / f"{name}.ipynb"
  assert path.is_file(), f"missing notebook {path}"
  return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
  assert not dirty, f"{name}.ipynb: code cells {dirty} hold outputs or execution counts; strip them"
  setup = code[0].source
  assert "pip" in setup and setup.count("INSTALL_SOURCE = ") == 1, \
      f"{name}.ipynb: the first cell installs the package from INSTALL_SOURCE, given once"
  assert "<ORG>" not in setup and "COLAB_TPU_ADDR" not in setup, f"{name}.ipynb: the install cell needs no editing"
  assert any("jax.devices()[0].platform" in c.source for c in code), f"{name}.ipynb: reports jax's platform"
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1, f"{name}.ipynb: needs exactly one code cell tagged 'parameters', found {len(params)}"
  assert "MASKBIT_NB_FAST" in params[0].source, f"{name}.ipynb: parameters cell must honour MASKBIT_NB_FAST"


@pytest.fixture(scope="module")
def stand_in():
  server = StandIn()
  yield server
  server.shutdown()
  server.server_close()


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, stand_in):
  """A kernelspec for this interpreter (found through JUPYTER_PATH) and the kernel's environment."""
  jupyter = tmp_path_factory.mktemp("jupyter")
  spec = jupyter / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps(dict(
      argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      display_name="maskbit_jax tests", language="python")))
  saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR")}
  os.environ["JUPYTER_PATH"] = str(jupyter)
  os.environ["JUPYTER_RUNTIME_DIR"] = str(jupyter / "runtime")
  env = dict(os.environ)
  # one CPU device in the kernel (the tests' 8 simulated devices would split the tiny batches 8 ways)
  drop_simulated_devices(env)
  env.update(MASKBIT_NB_FAST="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  # released names resolve against the stand-in hub (golden tiny checkpoints); nothing leaves loopback
  from conftest import golden_path

  golden = golden_path()
  if (golden / "fixture_configs.json").is_file():
    hub_dir = tmp_path_factory.mktemp("hub")
    registry = tiny_release(stand_in, golden, json.loads((golden / "fixture_configs.json").read_text()), hub_dir)
    (hub_dir / "registry.json").write_text(json.dumps(registry))
    env.update(hub_env(hub_dir, stand_in), MASKBIT_WEIGHTS_REGISTRY=str(hub_dir / "registry.json"))
  for key in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
    env.pop(key, None)
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def run_notebook(name: str, workdir, env: dict, **params):
  """Executes colab/<name>.ipynb in ``workdir`` with ``params`` assigned after its parameters cell.

  Returns (all printed text, number of displayed PNG images, a timing line: wall and the kernel's CPU seconds).
  """
  nb = _read(name)
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell("# injected by tests/test_notebooks.py\n"
                                       + "\n".join(f"{k} = {v!r}" for k, v in params.items()))
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, injected)
  # No per-cell limit: a slow machine must not fail the notebook (a kernel that dies is still reported).
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=None, allow_errors=False,
                                   resources={"metadata": {"path": str(workdir)}})
  start, cpu = time.perf_counter(), _children_cpu()
  client.execute(env=env)  # raises CellExecutionError (with the cell's traceback) on any error
  timing = f"{name}.ipynb: {time.perf_counter() - start:.1f} s wall, {_children_cpu() - cpu:.1f} s CPU in the kernel"
  text, pngs = [], 0
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.output_type == "stream":
        text.append(out.text)
      elif out.output_type in ("display_data", "execute_result"):
        pngs += "image/png" in out.data
        text.append(out.data.get("text/plain", ""))
  return "".join(text), pngs, timing


def _children_cpu() -> float:
  """CPU seconds of this process's finished children (the kernel counts once it has been shut down)."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _need_release(env):
  if "MASKBIT_WEIGHTS_REGISTRY" not in env:
    pytest.skip("golden fixtures not found (set MASKBIT_GOLDEN): no tiny release to serve")


def test_tokenizer_notebook(tmp_path, kernel_env, stand_in):
  _need_release(kernel_env)
  out = tmp_path / "out"
  # released names: the config and the file of the (stand-in) release, downloaded and converted
  text, pngs, timing = run_notebook("tokenizer", tmp_path, kernel_env, CONFIG="maskbit_tokenizer_tiny",
                                     TOKENIZER_CHECKPOINT="maskbit_tokenizer_tiny", OUT_DIR=str(out))
  assert "python -m maskbit_jax.convert" in text and "converted in" in text
  assert (out / "converted_tokenizer").is_dir()
  assert RANDOM_NOTICE not in text
  assert "PSNR" in text and "12-bit tokens" in text
  assert stand_in.gets("maskbit_tokenizer_tiny.bin")
  for png in ("reconstructions.png", "bit_planes.png", "bit_flips.png"):
    assert (out / png).is_file(), png
  assert pngs >= 3
  print(timing)


def test_maskbit_sampling_notebook(tmp_path, kernel_env, stand_in):
  _need_release(kernel_env)
  out = tmp_path / "out"
  text, pngs, timing = run_notebook("maskbit_sampling", tmp_path, kernel_env, OUT_DIR=str(out),
                                     CONFIG="maskbit_generator_tiny", TOKENIZER_CHECKPOINT="maskbit_tokenizer_tiny",
                                     GENERATOR_CHECKPOINT="maskbit_generator_tiny",
                                     GUIDANCE_SCALES=[1.0, 2.0], NUM_STEPS=[4, 8])  # 2.0 and 8: its released ones
  assert RANDOM_NOTICE not in text
  assert stand_in.gets("maskbit_generator_tiny.bin")
  for png in ("samples.png", "sweep_guidance_scale.png", "sweep_num_steps.png"):
    assert (out / png).is_file(), png
  assert pngs >= 3
  print(timing)


def test_bar_sampling_notebook(tmp_path, kernel_env):
  _need_release(kernel_env)
  out = tmp_path / "out"
  # BAR on random weights (FAST: the tiny configs), MaskBit by released name
  text, pngs, timing = run_notebook("bar_sampling", tmp_path, kernel_env, OUT_DIR=str(out),
                                     MASKBIT_CONFIG="maskbit_generator_tiny",
                                     MASKBIT_TOKENIZER_CHECKPOINT="maskbit_tokenizer_tiny",
                                     MASKBIT_GENERATOR_CHECKPOINT="maskbit_generator_tiny")
  assert text.count(RANDOM_NOTICE) == 2  # BAR's tokenizer and generator
  assert "BAR also returns the bits" in text
  for png in ("bar_samples.png", "maskbit_samples.png", "bar_vs_maskbit.png"):
    assert (out / png).is_file(), png
  assert pngs >= 3
  print(timing)


def test_train_tiny_notebook(tmp_path, kernel_env):
  workdir = tmp_path / "runs"
  text, pngs, timing = run_notebook("train_tiny", tmp_path, kernel_env, WORKDIR=str(workdir))
  assert "[tokenizer] done" in text and "[generator] done" in text
  assert (workdir / "tok" / "export" / "tokenizer").is_dir()
  assert (workdir / "gen" / "export" / "generator").is_dir()
  grids = sorted((workdir / "gen" / "images").glob("samples_*.png"))
  assert grids and grids[-1].name == "samples_00000020.png", grids  # FAST: 20 generator steps
  assert (workdir / "samples_all_classes.png").is_file()
  assert pngs >= 3
  print(timing)
