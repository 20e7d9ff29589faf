"""Every value of every released yaml is in our config of that model, with the same value.

The released files are kept verbatim under ``tests/data/reference_configs/`` (sources and commits in
its README). Our configs may hold more keys (this port's own); every leaf of a yaml must exist in
ours and be equal, except the few in ``EXCEPTIONS``, each with its reason. What the code does with
the values is tested where the code is (data pipeline, steps, loop) and, for the keys this file
brought in, below.
"""

from __future__ import annotations

import fnmatch
import os

import numpy as np
import pytest

from maskbit_jax.config import load_config
from maskbit_jax.train import observe

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data", "reference_configs")

# yaml (under DATA) -> our config (under configs/)
CONFIGS = {
    "markweberdev/maskbit/configs/tokenizer/maskbit_tokenizer_10bit.yaml": "maskbit_tokenizer_10bit.py",
    "markweberdev/maskbit/configs/tokenizer/maskbit_tokenizer_12bit.yaml": "maskbit_tokenizer_12bit.py",
    "markweberdev/maskbit/configs/tokenizer/maskbit_tokenizer_14bit.yaml": "maskbit_tokenizer_14bit.py",
    "markweberdev/maskbit/configs/tokenizer/maskbit_tokenizer_16bit.yaml": "maskbit_tokenizer_16bit.py",
    "markweberdev/maskbit/configs/tokenizer/maskbit_tokenizer_18bit.yaml": "maskbit_tokenizer_18bit.py",
    "markweberdev/maskbit/configs/tokenizer/vqgan_plus_10bit.yaml": "vqgan_plus_10bit.py",
    "markweberdev/maskbit/configs/tokenizer/vqgan_plus_12bit.yaml": "vqgan_plus_12bit.py",
    "markweberdev/maskbit/configs/generator/maskbit_generator_10bit.yaml": "maskbit_generator_10bit.py",
    "markweberdev/maskbit/configs/generator/maskbit_generator_12bit.yaml": "maskbit_generator_12bit.py",
    "markweberdev/maskbit/configs/generator/maskbit_generator_14bit.yaml": "maskbit_generator_14bit.py",
    "markweberdev/maskbit/configs/generator/maskbit_generator_14bit_128steps.yaml":
        "maskbit_generator_14bit_128steps.py",
    "markweberdev/maskbit/configs/generator/maskbit_generator_14bit_256steps.yaml":
        "maskbit_generator_14bit_256steps.py",
    "markweberdev/maskbit/configs/generator/maskbit_generator_16bit.yaml": "maskbit_generator_16bit.py",
    "markweberdev/maskbit/configs/generator/maskbit_generator_18bit.yaml": "maskbit_generator_18bit.py",
    "markweberdev/maskbit/configs/external/maskgit_tokenizer.yaml": "maskgit_tokenizer.py",
    "markweberdev/maskbit/configs/external/taming_vqgan_tokenizer.yaml": "taming_vqgan_tokenizer.py",
    "markweberdev/maskbit/configs/demo/demo.yaml": "demo.py",
    "amazon-far/BAR/configs/generator/bar_b.yaml": "bar_b.py",
    "amazon-far/BAR/configs/generator/bar_b_patch2.yaml": "bar_b_patch2.py",
    "amazon-far/BAR/configs/generator/bar_b_patch4.yaml": "bar_b_patch4.py",
    "amazon-far/BAR/configs/generator/bar_l.yaml": "bar_l.py",
    "amazon-far/BAR/configs/generator/bar_l_res512.yaml": "bar_l_res512.py",
    "amazon-far/BAR/configs/tokenizer/bar_fsq_16bits.yaml": "bar_fsq_16bits.py",
    "amazon-far/BAR/configs/tokenizer/bar_fsq_10bits_res512.yaml": "bar_fsq_10bits_res512.py",
}

# (yaml glob, leaf key glob) -> why our config does not hold the yaml's value.
EXCEPTIONS = {
    ("*", "dataset.params.*"): "the reference's loader plumbing: shard paths (DATA_PATH/..., /path/to/...) and "
                               "torch DataLoader / webdataset settings; this port reads dataset.source, "
                               "dataset.eval_source, dataset.pretokenized, dataset.num_threads",
    ("markweberdev/*", "experiment.vqgan_checkpoint"): "a machine path (MODEL_PATH/...); ours is empty until set",
    ("markweberdev/*", "experiment.logger"): "which tracker: this port always writes TensorBoard event files "
                                            "(clu), the released 'tensorboard'",
    ("markweberdev/*", "training.enable_tf32"): "PyTorch's TF32 switch; runtime.precision is this port's (its "
                                               "'default' lets XLA use TF32 on GPUs, as True does)",
    ("markweberdev/*", "experiment.max_train_examples"): "the epoch length of the reference's webdataset stream "
                                                        "(bookkeeping; both train for training.max_train_steps); "
                                                        "our sources know their own length",
    ("markweberdev/*", "experiment.resume"): "True in every release: this port always resumes from the workdir's "
                                            "checkpoints (a fresh run takes a new --workdir)",
    ("markweberdev/maskbit/configs/external/*", "training.*"):
        "these files feed only scripts/eval_tokenizer.py (the external tokenizers are evaluated, never trained): "
        "it reads per_gpu_batch_size as its evaluation batch (this port's evaluate --batch_size) and enable_tf32, "
        "and nothing else of training.*",
    ("markweberdev/maskbit/configs/tokenizer/vqgan_plus_12bit.yaml", "experiment.name"):
        "a run name for logs; the release's file says 'vqgan_plus_10bit' (copied from the 10-bit file)",
}


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
  else:
    yield prefix, tree


def _lookup(tree, dotted):
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      raise KeyError(dotted)
    node = node[part]
  return node


def _same(ours, theirs) -> bool:
  if isinstance(theirs, bool) or isinstance(ours, bool):
    return type(ours) is type(theirs) and ours == theirs
  if isinstance(theirs, (int, float)) and isinstance(ours, (int, float)):
    return float(ours) == float(theirs)
  if isinstance(theirs, list) and isinstance(ours, (list, tuple)):
    return len(ours) == len(theirs) and all(_same(a, b) for a, b in zip(ours, theirs))
  return type(ours) is type(theirs) and ours == theirs


def _excepted(yaml_path: str, key: str) -> str | None:
  for (file_glob, key_glob), why in EXCEPTIONS.items():
    if fnmatch.fnmatch(yaml_path, file_glob) and fnmatch.fnmatch(key, key_glob):
      return why
  return None


def test_every_released_yaml_is_in_the_table():
  found = set()
  for root, _, files in os.walk(DATA):
    found.update(os.path.relpath(os.path.join(root, f), DATA) for f in files if f.endswith(".yaml"))
  assert found == set(CONFIGS)
  for ours in CONFIGS.values():
    assert os.path.isfile(os.path.join(REPO, "configs", ours)), ours


def test_every_exception_is_used():
  """An exception no yaml needs any more is a stale excuse."""
  used = set()
  for yaml_path in CONFIGS:
    theirs = load_config(os.path.join(DATA, yaml_path)).to_dict()
    for key, _ in _leaves(theirs):
      for (file_glob, key_glob) in EXCEPTIONS:
        if fnmatch.fnmatch(yaml_path, file_glob) and fnmatch.fnmatch(key, key_glob):
          used.add((file_glob, key_glob))
  assert used == set(EXCEPTIONS)


@pytest.mark.parametrize("yaml_path", sorted(CONFIGS))
def test_released_values_are_ours(yaml_path):
  theirs = load_config(os.path.join(DATA, yaml_path)).to_dict()
  ours = load_config(os.path.join(REPO, "configs", CONFIGS[yaml_path])).to_dict()
  problems = []
  for key, value in _leaves(theirs):
    if _excepted(yaml_path, key):
      continue
    try:
      mine = _lookup(ours, key)
    except KeyError:
      problems.append(f"{key}: missing (released {value!r})")
      continue
    if not _same(mine, value):
      problems.append(f"{key}: ours {mine!r}, released {value!r}")
  assert not problems, f"configs/{CONFIGS[yaml_path]} vs {yaml_path}:\n  " + "\n  ".join(problems)


# ----------------------------------------------------------------------------------------- the code honours them

TOK_TINY = os.path.join(REPO, "configs", "tokenizer_tiny.py")
GEN_TINY = os.path.join(REPO, "configs", "generator_tiny.py")


@pytest.mark.parametrize("name, aspect, interp", [("maskbit_generator_12bit.py", False, "bicubic"),
                                                  ("maskbit_tokenizer_12bit.py", True, "bilinear")])
def test_the_train_pipeline_reads_the_preprocessing(monkeypatch, name, aspect, interp):
  """The generator yamls' square crops and bicubic resampling (tokenizer: 3/4..4/3 and bilinear) reach the
  transform, and with use_aspect_ratio_aug False every random crop is square."""
  from maskbit_jax.data import augment, pipeline
  from maskbit_jax.data.sources import make_source

  pre = load_config(os.path.join(REPO, "configs", name)).dataset.preprocessing.to_dict()
  seen = []
  real = augment.train_transform
  monkeypatch.setattr(augment, "train_transform", lambda *a, **k: seen.append(k) or real(*a, **k))
  batch = next(iter(pipeline.image_train_dataset(make_source("synthetic:8", 32), size=32, batch_size=4, seed=0,
                                                 preprocessing=pre, num_threads=1)))
  assert batch["image"].shape == (4, 32, 32, 3)
  assert {(k["use_aspect_ratio_aug"], k["interp"]) for k in seen} == {(aspect, interp)}
  rng = np.random.default_rng(0)
  ratio = augment.ASPECT_RANGE if aspect else (1.0, 1.0)
  boxes = [augment.random_resized_crop_box(300, 400, rng, (0.8, 1.0), ratio) for _ in range(200)]
  assert all(h == w for _, _, h, w in boxes) == (not aspect)


def test_overfit_batch_repeats_the_first_batches_exactly():
  """training.overfit_batch: the first overfit_batch_num batches, augmentation included, over and over."""
  from maskbit_jax.data import pipeline
  from maskbit_jax.data.sources import make_source

  training = dict(overfit_batch=True, overfit_batch_num=2)
  assert pipeline.overfit_batches(training) == 2 and pipeline.overfit_batches(dict(overfit_batch=False)) == 0
  it = iter(pipeline.image_train_dataset(make_source("synthetic:16", 32), size=32, batch_size=3, seed=0,
                                         num_threads=1, overfit=pipeline.overfit_batches(training)))
  batches = [next(it) for _ in range(6)]
  for i in range(2, 6):
    np.testing.assert_array_equal(batches[i]["image"], batches[i % 2]["image"])
  assert not np.array_equal(batches[0]["image"], batches[1]["image"])
  with pytest.raises(ValueError, match="overfit_batch_num"):
    pipeline.overfit_batches(dict(overfit_batch=True, overfit_batch_num=0))


def test_parameter_grad_norms_are_the_references_after_clipping():
  """log_grad_norm: ||g||_2 / numel of each parameter's gradient after clip_grad_norm_(max_grad_norm)."""
  import jax.numpy as jnp

  from maskbit_jax.train.tokenizer_step import parameter_grad_norms

  grads = {"enc": {"kernel": jnp.full((2, 3), 2.0)}, "bias": jnp.array([3.0, 4.0])}
  total = np.sqrt(6 * 4.0 + 25.0)  # 7
  clipped = parameter_grad_norms(grads, 1.0)
  coef = 1.0 / (total + 1e-6)
  assert set(clipped) == {"grad_norm/enc/kernel", "grad_norm/bias"}
  np.testing.assert_allclose(float(clipped["grad_norm/enc/kernel"]), np.sqrt(24.0) * coef / 6, rtol=1e-6)
  np.testing.assert_allclose(float(clipped["grad_norm/bias"]), 5.0 * coef / 2, rtol=1e-6)
  unclipped = parameter_grad_norms(grads, None, prefix="discriminator/")
  np.testing.assert_allclose(float(unclipped["grad_norm/discriminator/bias"]), 2.5, rtol=1e-6)
  assert float(parameter_grad_norms(grads, 100.0)["grad_norm/bias"]) == pytest.approx(2.5)  # below the clip


def test_every_step_reports_every_parameters_grad_norm(tmp_path):
  """The stage-I (tokenizer and discriminator) and stage-II steps name every parameter in GRAD_NORMS
  (traced only, nothing compiled)."""
  import jax
  from flax import linen as nn

  from maskbit_jax import sharding
  from maskbit_jax.train import generator_step as gs
  from maskbit_jax.train import tokenizer_step as ts
  from maskbit_jax.train.tasks import make_task

  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  names = lambda tree, prefix="": {f"grad_norm/{prefix}" + "/".join(str(k.key) for k in path)
                                   for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
  cfg = load_config(TOK_TINY, ["--config.runtime.num_devices=1", "--config.losses.perceptual_weight=0",
                               "--config.training.per_gpu_batch_size=2"])
  task = make_task(cfg, mesh, str(tmp_path / "tok"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    state = jax.eval_shape(task.init_state)
    batch = {k: jax.ShapeDtypeStruct((2, 32, 32, 3) if k == "image" else (2,), np.float32 if k == "image"
                                     else np.int32) for k in ("image", "label")}
    _, metrics = jax.eval_shape(lambda s, b: ts.train_step(s, b, None, spec=task.spec, discriminator_on=True),
                                state, batch)
  assert set(metrics[ts.GRAD_NORMS]) == names(state.params) | names(state.disc_params, "discriminator/")
  assert task.spec.max_grad_norm == 1.0

  from maskbit_jax.models.maskbit_transformer import build_generator_module
  from maskbit_jax.generator import generator_fields
  from maskbit_jax.train.optim import make_optimizer

  gcfg = load_config(GEN_TINY)
  module = build_generator_module(generator_fields(gcfg))
  settings = gs.MLMSettings.from_config(gcfg)
  tx = make_optimizer(gcfg, kind="mlm")
  from maskbit_jax.models.maskbit_transformer import init_generator_params

  state = jax.eval_shape(lambda k: gs.init_train_state(module, tx, init_generator_params(module, k), k),
                         jax.random.key(0))
  side = module.img_size // module.input_stride  # the config's token grid
  tokens = jax.ShapeDtypeStruct((2, side, side), np.int32)
  _, metrics = jax.eval_shape(lambda s, b: gs.mlm_train_step(s, b, module=module, tx=tx, settings=settings),
                              state, {"tokens": tokens, "label": jax.ShapeDtypeStruct((2,), np.int32)})
  assert set(metrics[gs.GRAD_NORMS]) == names(state.params) and settings.max_grad_norm == 1.0


class _CountingTask:
  """A stand-in for a training task (a 3-weight model, one jitted step) to run the real loop in a second."""

  stage, log_keys, process_count, global_batch = "tokenizer", ("loss",), 1, 2

  def __init__(self, mesh):
    import flax
    import jax
    import jax.numpy as jnp

    from maskbit_jax import sharding
    from maskbit_jax.train.tokenizer_step import GRAD_NORMS, parameter_grad_norms

    @flax.struct.dataclass
    class State:
      step: jax.Array
      w: jax.Array

    self.State = State
    rep = sharding.replicated(mesh)
    self.state_shardings = State(step=rep, w=rep)

    def step(state, batch):
      grads = {"w": state.w - batch["x"].mean()}
      metrics = {"loss": jnp.mean(grads["w"] ** 2), GRAD_NORMS: parameter_grad_norms(grads, None)}
      return State(step=state.step + 1, w=state.w - 0.1 * grads["w"]), metrics

    self._step = jax.jit(step)

  def init_state(self):
    import jax.numpy as jnp

    return self.State(step=jnp.zeros((), jnp.int32), w=jnp.arange(3, dtype=jnp.float32))

  def dataset(self):
    import grain

    ds = grain.MapDataset.range(1000).map(lambda i: {"x": np.full((2,), i, np.float32)})
    return ds.to_iter_dataset()

  def to_device(self, batch):
    return batch

  def step(self, state, batch, step_number):
    return self._step(state, batch)

  def learning_rate(self, step):
    return 0.1

  def compile_steps(self, start):
    return {start}

  def start_note(self, start):
    return None

  def evaluate(self, state):
    return {}

  def visualize(self, state):
    return observe.Grid(np.zeros((1, 8, 8, 3), np.float32), ["x"], 1)

  def export(self, state):
    return "exported"


def test_loop_logs_grad_norms_on_their_cadence_and_starts_from_init_checkpoint(tmp_path, monkeypatch):
  """experiment.log_grad_norm_every: per-parameter norms written at steps 3, 6 only; experiment.init_checkpoint:
  a new run takes the given step folder's whole state and step (a run with its own checkpoints ignores it)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  from maskbit_jax.train import loop

  monkeypatch.setattr(loop, "make_task", lambda cfg, mesh, workdir: _CountingTask(mesh))
  base = ["--config.runtime.num_devices=1", "--config.experiment.log_every=1", "--config.experiment.save_every=4",
          "--config.experiment.generate_every=1000", "--config.experiment.eval_every=0",
          "--config.experiment.log_grad_norm_every=3", "--config.training.max_train_steps=8"]
  first = str(tmp_path / "first")
  assert loop.train(load_config(TOK_TINY, base), first, num_steps=6)["end_step"] == 6
  acc = EventAccumulator(os.path.join(first, "tensorboard"), size_guidance={"tensors": 0})
  acc.Reload()
  assert [e.step for e in acc.Tensors("grad_norm/w")] == [3, 6]
  assert [e.step for e in acc.Tensors("loss")] == [1, 2, 3, 4, 5, 6]

  step4 = os.path.join(first, "checkpoints", "4")
  second = str(tmp_path / "second")
  summary = loop.train(load_config(TOK_TINY, base + [f"--config.experiment.init_checkpoint={step4}"]), second,
                       num_steps=1)
  assert summary["start_step"] == 4 and summary["end_step"] == 5
  with pytest.raises(FileNotFoundError, match="init_checkpoint"):
    loop.train(load_config(TOK_TINY, base + ["--config.experiment.init_checkpoint=" + str(tmp_path / "none")]),
               str(tmp_path / "third"))
  resumed = loop.train(load_config(TOK_TINY, base + [f"--config.experiment.init_checkpoint={step4}"]), second)
  assert resumed["start_step"] == 5 and resumed["finished"]  # its own checkpoint wins
