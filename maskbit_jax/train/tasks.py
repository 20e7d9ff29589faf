"""The two training stages behind one interface, so one loop (:mod:`maskbit_jax.train.loop`) runs both.

A task owns what differs between stages: models, optimizers, the jitted
step, its input pipeline, what it draws every ``generate_every`` steps, what
it evaluates and what it exports at the end. Both read the reference's
config keys (``model.*``, ``losses.*``, ``optimizer.*``, ``lr_scheduler.*``,
``training.*``, ``dataset.*``) plus this port's ``runtime.*``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from maskbit_jax import checkpointing, paths, registry, runtime, sharding
from maskbit_jax.bits import combine_tokens, split_tokens
from maskbit_jax.data import augment, pipeline
from maskbit_jax.data.sample_images import class_caption
from maskbit_jax.data.sources import eval_interpolation, make_source
from maskbit_jax.data.token_dataset import TokenDataset
from maskbit_jax.distributed import host_copy
from maskbit_jax.evaluation import runs as evaluation_runs
from maskbit_jax.evaluation.synthetic_classifier import class_accuracy
from maskbit_jax.generator import Generator, generator_fields
from maskbit_jax.losses import perceptual, vqgan_loss as vl
from maskbit_jax.losses.masking import mask_tokens
from maskbit_jax.models.discriminator import build_discriminator, init_discriminator_params
from maskbit_jax.models.layers import jit_init
from maskbit_jax.models.lfq_quantizer import MAX_TOKEN_BITS
from maskbit_jax.models.maskbit_transformer import build_generator_module, init_generator_params
from maskbit_jax.models.tokenizer import build_tokenizer_module, init_tokenizer_params
from maskbit_jax.sampling import api as sampling_api
from maskbit_jax.tokenizer import Tokenizer, load_tokenizer
from maskbit_jax.train import generator_step as gs, observe, tokenizer_step as ts
from maskbit_jax.train.optim import make_optimizer, make_schedule

STAGES = ("tokenizer", "generator", "bar", "bar_fsq")
# The classes of the reference samplers' training grids (MaskBit's sample(), BAR's sample_images): goldfish,
# chicken, tiger cat, hourglass, ship, dog, race car, airliner, teddy bear, then one random class.
GRID_CLASSES = (1, 7, 282, 604, 724, 179, 751, 404, 850)
MAX_GRID_CLASSES = 32  # models with at most this many classes show each of them in the sample grid


def stage_of(cfg: ml_collections.ConfigDict) -> str:
  """The training stage of a config: its model family's task (``registry``: ``tokenizer``, ``generator``,
  ``bar``, ``bar_fsq``)."""
  fam = registry.family_of(cfg)
  if fam.task is None:
    raise ValueError(f"model family {fam.name!r} has no training task (registry.Family.task)")
  return fam.task


def _positive_int(cfg, dotted: str, minimum: int = 1) -> int:
  node = cfg
  for part in dotted.split("."):
    node = node[part]
  value = int(node)
  if value < minimum:
    raise ValueError(f"{dotted} must be >= {minimum}, got {value}")
  return value


def validate_common(cfg: ml_collections.ConfigDict) -> None:
  """Range checks a run needs before anything is built; each error names the key."""
  vq = cfg.model.vq_model
  bits = int(vq.token_size)
  if vq.get("quantizer_type") == "lookup-free" and not 1 <= bits <= MAX_TOKEN_BITS:
    raise ValueError(f"model.vq_model.token_size={bits}: LFQ tokens need 1..{MAX_TOKEN_BITS} bits "
                     "(indices are int32)")
  for key in ("training.per_gpu_batch_size", "training.max_train_steps", "training.gradient_accumulation_steps",
              "experiment.save_every", "experiment.log_every", "experiment.generate_every"):
    _positive_int(cfg, key)
  data = cfg.dataset
  augment.check_preprocessing(data.preprocessing)
  policy = str(data.get("corrupt_images", "error"))
  if policy not in pipeline.CORRUPT_POLICIES:
    raise ValueError(f"dataset.corrupt_images={policy!r}; use one of {pipeline.CORRUPT_POLICIES}")
  keep = int(cfg.runtime.get("keep_checkpoints", 3))
  if keep < 1:
    raise ValueError(f"runtime.keep_checkpoints must be >= 1, got {keep}")


def global_batch_size(cfg, mesh) -> int:
  """Images per optimizer step over all processes.

  The reference's ``per_gpu_batch_size x devices x gradient_accumulation_steps``,
  or ``training.global_batch_size x gradient_accumulation_steps`` when that
  port key is set (> 0): on a pod one usually fixes the global batch.
  """
  training = cfg.training
  accum = int(training.gradient_accumulation_steps)
  fixed = int(training.get("global_batch_size", 0) or 0)
  if fixed < 0:
    raise ValueError(f"training.global_batch_size must be >= 0 (0: per_gpu_batch_size x devices), got {fixed}")
  per_step = fixed if fixed else int(training.per_gpu_batch_size) * mesh.devices.size
  return per_step * accum


def _global_array(local: dict, shardings: dict) -> dict:
  """Per-process numpy pieces -> global arrays on the mesh (the same call on one or many processes)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in local.items()}


@contextlib.contextmanager
def outside_training_mesh():
  """No context mesh and no logical rules, as the evaluation CLI runs: maskbit_jax.evaluate places its batches
  on a mesh of the local devices of its own, which the training mesh (and its rules) must not constrain."""
  with jax.set_mesh(None), nn.logical_axis_rules(()):
    yield


class _Task:
  stage: str
  log_keys: tuple[str, ...]

  def __init__(self, cfg: ml_collections.ConfigDict, mesh, workdir: str):
    self.cfg, self.mesh, self.workdir = cfg, mesh, workdir
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    self.global_batch = global_batch_size(cfg, mesh)
    accum = int(cfg.training.gradient_accumulation_steps)
    # every micro-batch of the accumulation must split evenly over the batch axes and the processes
    pipeline.check_batch(self.global_batch // accum, self.process_count, sharding.data_parallel_size(mesh))
    self.local_batch = self.global_batch // self.process_count
    self.size = int(cfg.dataset.preprocessing.resolution)
    self.seed = int(cfg.training.get("seed", 0))

  def compile_steps(self, start: int) -> set[int]:
    """Step numbers (0-based, as ``step`` takes them) whose step compiles a program: the first of this start."""
    return {start}

  def start_note(self, start: int) -> str | None:
    """One line the loop prints when a run (or a resume) starts, explaining what its log will show."""
    return None

  def to_device(self, local_batch: dict) -> dict:
    return _global_array(local_batch, self.batch_shardings)

  def source(self, key: str = "source"):
    spec = str(self.cfg.dataset.get(key, ""))
    if not spec:
      raise ValueError(f"dataset.{key} is empty; give a data source (synthetic:N, a folder, tfds:NAME:SPLIT)")
    # eval_interpolation: evaluation and the grids preprocess as the reference evaluates (training reads
    # the stored images through .raw and its own augmentation).
    return make_source(spec, self.size, seed=self.seed, interpolation=eval_interpolation(self.cfg))

  def image_dataset(self):
    data = self.cfg.dataset
    return pipeline.image_train_dataset(
        self.source(), size=self.size, batch_size=self.local_batch, seed=self.seed,
        preprocessing=data.preprocessing.to_dict(), process_index=self.process_index,
        process_count=self.process_count, corrupt_images=str(data.get("corrupt_images", "error")),
        num_threads=int(data.get("num_threads", 8)), prefetch_buffer_size=int(data.get("prefetch_buffer_size", 16)),
        overfit=pipeline.overfit_batches(self.cfg.get("training", None)))

  def _eval_examples(self, num: int) -> tuple[np.ndarray, np.ndarray]:
    source = self.source("eval_source")
    examples = [source[i] for i in range(min(num, len(source)))]
    return np.stack([e["image"] for e in examples]), np.asarray([e["label"] for e in examples], np.int32)

  # In-training evaluation (``evaluation.*``, every ``experiment.eval_every`` steps and at the end, on
  # ``experiment.eval_images`` images): the weights files each stage's metrics need, {config key: metrics}.
  # The loop calls prepare_evaluation once before the first step; evaluate() then runs the evaluation CLI's
  # own code (maskbit_jax.evaluate) on the model's weights.
  evaluation_weights: dict[str, str] = {}
  evaluates_samples = False  # stage II: FID against evaluation.ref_stats

  def eval_images(self) -> int:
    return int(self.cfg.experiment.get("eval_images", 0) or 0)

  def evaluation_setting(self, key: str, default=""):
    return (self.cfg.get("evaluation", None) or {}).get(key, default)

  def prepare_evaluation(self) -> None:
    """Loads the networks configured in ``evaluation.*`` (a missing file fails here, before training); one
    printed note names the metrics skipped for a weights file that is not configured."""
    self._eval_nets: dict = {}
    if self.eval_images() <= 0:
      return
    skipped = []
    for key, metrics in self.evaluation_weights.items():
      path = str(self.evaluation_setting(key) or "")
      if not path:
        skipped.append(f"{metrics} (evaluation.{key} is not set)")
        continue
      if not paths.exists(path):
        raise FileNotFoundError(f"evaluation.{key}={path!r}: file not found ({metrics} during training)")
      if key == "inception_checkpoint":
        self._eval_nets[key] = evaluation_runs.load_inception(path, None)
      else:
        vgg = str(self.evaluation_setting("vgg16_checkpoint") or "") or None
        self._eval_nets[key] = evaluation_runs.load_lpips(path, vgg)
    self._ref_stats = None
    if self.evaluates_samples and "inception_checkpoint" in self._eval_nets:
      path = str(self.evaluation_setting("ref_stats") or "")
      if not path:
        skipped.append("FID (evaluation.ref_stats is not set; IS only)")
      elif not paths.exists(path):
        raise FileNotFoundError(f"evaluation.ref_stats={path!r}: file not found (FID during training)")
      else:
        from maskbit_jax.evaluation.fid import load_reference_stats

        self._ref_stats = load_reference_stats(path, expected_dim=2048)
    if skipped and self.process_index == 0:
      print("note: the in-training evaluation skips " + "; ".join(skipped), flush=True)

  def eval_batch_size(self) -> int:
    return evaluation_runs.check_batch_size(int(self.evaluation_setting("batch_size", 32)))

  @staticmethod
  def eval_scalars(result: dict) -> dict:
    """An evaluation CLI result -> the logged scalars (``eval_<metric>``; ``eval_images`` the count)."""
    if not result.get("complete", True):
      raise KeyboardInterrupt("the in-training evaluation was interrupted")
    names = {"num_images": "eval_images", "rFID": "eval_rfid", "FID": "eval_fid", "seconds": "eval_seconds",
             "InceptionScore": "eval_inception_score", "CodebookUsage": "eval_codebook_usage",
             "CodebookEntropy": "eval_codebook_entropy"}
    return {names.get(k, f"eval_{k.lower()}"): float(v) for k, v in result.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}

  def evaluate_samples(self, gen) -> dict:
    """FID (with ``evaluation.ref_stats``) and IS of ``experiment.eval_images`` class-balanced samples of
    ``gen`` (MaskBit or BAR), as ``python -m maskbit_jax.evaluate generator`` computes them."""
    inception = getattr(self, "_eval_nets", {}).get("inception_checkpoint")
    if self.eval_images() <= 0 or inception is None:
      return {}
    with outside_training_mesh():
      result = evaluation_runs.evaluate_generator(gen, self.tokenizer, num_images=self.eval_images(),
                                  batch_size=self.eval_batch_size(), seed=int(self.evaluation_setting("seed", 0)),
                                  inception=inception, ref_stats=self._ref_stats, progress=False)
    return self.eval_scalars(result)

  _tokenizer_psnr: float | None = None  # synthetic_figures' held-out PSNR of the frozen tokenizer

  def trains_on_synthetic(self) -> bool:
    return str(self.cfg.dataset.get("source", "")).startswith("synthetic:")

  def synthetic_figures(self, gen) -> dict:
    """The two figures that show a run on the embedded synthetic set working: ``eval_class_accuracy``, the
    share of ``experiment.eval_images`` class-balanced samples of ``gen`` that the packaged synthetic-set
    classifier assigns to the class asked for, and ``eval_tokenizer_psnr``, the frozen tokenizer's PSNR on as
    many held-out images (``dataset.eval_source``). Empty for other data or without eval images."""
    num = self.eval_images()
    if num <= 0 or not self.trains_on_synthetic():
      return {}

    labels = evaluation_runs.class_balanced_labels(num, int(gen.num_classes))
    rows, key = self.eval_batch_size(), jax.random.key(int(self.evaluation_setting("seed", 0)))
    # the frozen tokenizer's weights as host arrays: placed like the images, not where training put them
    tok = dataclasses.replace(self.tokenizer, params=host_copy(self.tokenizer.params))
    with outside_training_mesh():  # every process draws the same (few) samples
      images = np.concatenate([np.asarray(host_copy(sampling_api.sample(gen, tok, labels[i:i + rows],
                                                           jax.random.fold_in(key, i))["images"]))
                               for i in range(0, num, rows)])
      if self._tokenizer_psnr is None:  # the tokenizer is frozen: its figure is measured once a run
        recon = evaluation_runs.evaluate_tokenizer(tok, self.source("eval_source"), batch_size=rows, num_images=num,
                                   progress=False)
        self._tokenizer_psnr = float(recon["PSNR"])
    return dict(eval_class_accuracy=class_accuracy(np.clip(images, 0.0, 1.0), labels),
                eval_tokenizer_psnr=self._tokenizer_psnr)

  use_ema: bool  # training.use_ema, as each task's step settings hold it (a property there)

  def model_params(self, state):
    """The weights the model is shown, evaluated and exported with: the EMA copy where the recipe keeps one,
    else the trained weights (the state's ``ema_params`` then stays at its initial copy)."""
    return state.ema_params if self.use_ema else state.params

  grid_samples: int | None = None  # None: training.num_generated_images (BAR's sample_images)

  def sample_grid(self, gen, num_classes: int) -> observe.Grid:
    """``grid_samples`` class-conditional samples of ``gen`` (MaskBit or BAR) for the grid: ImageNet models
    draw ``GRID_CLASSES`` and a random class (seeded) as the reference does, other class sets 0, 1, ... (each class
    at least once when there are at most ``MAX_GRID_CLASSES``)."""
    n = self.grid_samples or max(int(self.cfg.training.get("num_generated_images", 10)), 1)
    if num_classes == 1000:
      classes = GRID_CLASSES + (int(np.random.default_rng(self.seed).integers(0, 999)),)
      labels = np.resize(np.asarray(classes), n)
    else:  # a small class set: every class at least once
      labels = np.arange(max(n, num_classes if num_classes <= MAX_GRID_CLASSES else 0)) % num_classes
    out = sampling_api.sample(gen, self.tokenizer, labels, jax.random.key(self.seed))
    images = host_copy(out["images"])  # inside the training mesh the batch may span every process's devices
    return observe.Grid(np.clip(images, 0.0, 1.0), [self.class_caption(c) for c in labels], min(len(labels), 8))

  def class_caption(self, label: int) -> str:
    """How a grid names class ``label``: the synthetic set's names ("green triangle") when the run trains on
    it, else "class <label>"."""
    return class_caption(label, self.cfg.dataset.get("source", ""))

  def export_params(self, params, name: str, kind: str) -> str | None:
    """Writes ``params`` to ``workdir/export/<name>``; called on every process (the gather is collective),
    written by process 0, which returns the path (the others return None)."""
    params = host_copy(params)
    if self.process_index != 0:
      return None
    path = paths.join(self.workdir, "export", name)
    return checkpointing.save_params(path, params, kind=kind, config=self.cfg.to_dict(), overwrite=True)


class TokenizerTask(_Task):
  """Stage I: VQGAN+ tokenizer with its discriminator (``scripts/train_tokenizer.py``)."""

  stage = "tokenizer"
  log_keys = ("total_loss", "reconstruction_loss", "quantizer_loss", "discriminator_loss")
  evaluation_weights = {"inception_checkpoint": "rFID and IS", "lpips_checkpoint": "LPIPS"}

  def __init__(self, cfg, mesh, workdir):
    super().__init__(cfg, mesh, workdir)

    dtype, precision = runtime.training(cfg)
    if "discriminator" not in cfg.model or "losses" not in cfg:
      raise ValueError("training a tokenizer needs the stage-I recipe's model.discriminator and losses sections")
    if cfg.model.vq_model.get("model_class") not in ("vqgan+", "maskgit"):
      raise ValueError(f"training model_class {cfg.model.vq_model.get('model_class')!r} is not supported "
                       "(vqgan+ or maskgit)")
    self.loss_cfg = vl.VQGANLossConfig.from_config(cfg.losses)
    self.model = build_tokenizer_module(cfg.model.vq_model, dtype=dtype, precision=precision)
    self.disc = build_discriminator(cfg.model.discriminator, dtype=dtype, precision=precision)
    perceptual_fn, self.perceptual_vars = self._perceptual(vl, dtype, precision)
    accum = int(cfg.training.gradient_accumulation_steps)
    no_accum = _without_accumulation(cfg)  # the step accumulates itself
    self.spec = ts.TokenizerStep(
        model=self.model, disc=self.disc, loss_cfg=self.loss_cfg, perceptual_fn=perceptual_fn,
        tx=make_optimizer(no_accum, kind="generator", total_batch_size=self.global_batch),
        disc_tx=make_optimizer(no_accum, kind="discriminator", total_batch_size=self.global_batch),
        use_ema=bool(cfg.training.get("use_ema", True)), accumulation=accum,
        max_grad_norm=None if cfg.training.get("max_grad_norm") is None else float(cfg.training.max_grad_norm),
        entropy_group_size=ts.entropy_group_size(self.loss_cfg, int(cfg.training.per_gpu_batch_size)))
    self.schedule = make_schedule(cfg, kind="generator", total_batch_size=self.global_batch)
    self.step_fn = ts.JittedTokenizerStep(self.spec, mesh, self.perceptual_vars)
    self.state_shardings = self.step_fn.state_shardings
    self.batch_shardings = self.step_fn.batch_shardings
    self._ts = ts

  def _perceptual(self, vl, dtype, precision):
    if self.loss_cfg.perceptual_weight == 0.0:
      return None, None
    path = self.loss_cfg.perceptual_checkpoint
    if not path:
      raise ValueError(
          f"losses.perceptual_weight={self.loss_cfg.perceptual_weight} needs the perceptual network's weights: set "
          f"losses.perceptual_checkpoint to the converted {self.loss_cfg.perceptual_loss} file (see "
          "maskbit_jax.losses.perceptual), or losses.perceptual_weight=0 to train without it")

    variables = (perceptual.load_resnet50_params(path) if self.loss_cfg.perceptual_loss == "resnet50"
                 else perceptual.load_lpips_params(path))
    return vl.perceptual_loss_fn(self.loss_cfg, dtype=dtype, precision=precision), variables

  def init_state(self):
    def make(key):
      k_tok, k_disc, k_state = jax.random.split(key, 3)
      return self._ts.init_state(self.spec, init_tokenizer_params(self.model, k_tok),
                                 init_discriminator_params(self.disc, k_disc), k_state)

    return jit_init(make, out_shardings=self.state_shardings)(jax.random.key(self.seed))

  @property
  def use_ema(self) -> bool:
    return self.spec.use_ema

  def dataset(self):
    return self.image_dataset()

  def step(self, state, batch, step_number: int):
    return self.step_fn(state, batch, self.perceptual_vars, step_number)

  def discriminator_start(self) -> int:
    return int(self.cfg.losses.get("discriminator_start", 0))

  def compile_steps(self, start: int) -> set[int]:
    # the phase from losses.discriminator_start on is a second program (tokenizer_step.JittedTokenizerStep)
    return {start} | ({self.discriminator_start()} if self.discriminator_start() > start else set())

  def start_note(self, start: int) -> str | None:
    total = int(self.cfg.training.max_train_steps)
    disc = self.discriminator_start()
    when = (f"the discriminator trains from step {disc} (discriminator_loss is 0 before)" if disc < total else
            f"the discriminator never trains (losses.discriminator_start={disc} >= {total} steps; discriminator_loss"
            " stays 0)")
    entropy = float(self.cfg.model.vq_model.get("entropy_loss_weight", 0.0) or 0.0)
    signs = ("quantizer_loss and total_loss can be negative: the quantizer's entropy term rewards using the "
             "codebook evenly (lower is better); " if entropy > 0 else "")
    return signs + when

  @functools.cached_property
  def _reconstruct(self):
    return jax.jit(lambda p, x: jnp.clip(self.model.apply({"params": p}, x)[0], 0.0, 1.0))

  def visualize(self, state) -> observe.Grid:
    n = int(self.cfg.training.get("num_generated_images", 2))
    images, classes = self._eval_examples(max(n, 1))
    recon = host_copy(self._reconstruct(host_copy(self.model_params(state)), images))
    labels = [self.class_caption(c) for c in classes] + [""] * len(images)
    return observe.Grid(np.concatenate([images, recon]), labels, len(images), ("original", "reconstruction"))

  def evaluate(self, state) -> dict:
    """rFID, IS (with ``evaluation.inception_checkpoint``), PSNR, SSIM, MAE, MSE, LPIPS (with
    ``evaluation.lpips_checkpoint``) and codebook usage of the reconstructions (``model_params``) of the first
    ``experiment.eval_images`` eval images: ``python -m maskbit_jax.evaluate tokenizer``'s numbers."""
    if self.eval_images() <= 0:
      return {}

    nets = getattr(self, "_eval_nets", {})
    tok = Tokenizer(self.cfg, self.model, host_copy(self.model_params(state)))
    with outside_training_mesh():
      result = evaluation_runs.evaluate_tokenizer(tok, self.source("eval_source"), batch_size=self.eval_batch_size(),
                                  num_images=self.eval_images(), inception=nets.get("inception_checkpoint"),
                                  lpips=nets.get("lpips_checkpoint"), progress=False)
    return self.eval_scalars(result)

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def export(self, state) -> str:
    return self.export_params(self.model_params(state), "tokenizer", "tokenizer")


class GeneratorTask(_Task):
  """Stage II: the MaskBit bit transformer on a frozen tokenizer (``scripts/train_maskbit.py``)."""

  stage = "generator"
  log_keys = ("mlm_loss", "correct_tokens", "grad_norm")
  grid_samples = 10  # the reference's sample(): 10 images; training.num_generated_images sizes decoded_pairs
  evaluation_weights = {"inception_checkpoint": "FID and IS"}
  evaluates_samples = True

  def __init__(self, cfg, mesh, workdir):
    super().__init__(cfg, mesh, workdir)

    dtype, precision = runtime.training(cfg)
    fields = generator_fields(cfg)
    self.module = build_generator_module(fields, dtype=dtype, precision=precision)
    checkpoint = str(cfg.experiment.get("vqgan_checkpoint", "") or "")
    if not checkpoint:
      raise ValueError("stage II needs the frozen tokenizer: set experiment.vqgan_checkpoint (a released .bin, a "
                       "converted folder, or <stage-I workdir>/export/tokenizer)")
    # float32 whatever the compute dtype: the targets must be the tokenizer's own tokens (the reference
    # encodes in fp32/TF32).
    self.tokenizer = load_tokenizer(cfg, checkpoint, dtype="float32")
    self.settings = gs.MLMSettings.from_config(cfg)
    self.tx = make_optimizer(_without_accumulation(cfg), kind="mlm")
    self.schedule = make_schedule(cfg, kind="mlm")
    self.pretokenized = str(cfg.dataset.get("pretokenized", "") or "")
    tok_params = None if self.pretokenized else self.tokenizer.params
    self.step_fn, self.state_shardings, self.batch_shardings = gs.make_jitted_step(
        self.module, self.tx, self.settings, mesh, tokenizer=None if self.pretokenized else self.tokenizer.module,
        tokenizer_params=tok_params)
    self._gs = gs

  def init_state(self):
    def make(key):
      k_params, k_state = jax.random.split(key)
      return self._gs.init_train_state(self.module, self.tx, init_generator_params(self.module, k_params), k_state)

    return jit_init(make, out_shardings=self.state_shardings)(jax.random.key(self.seed))

  def dataset(self):
    if not self.pretokenized:
      return self.image_dataset()

    tokens = TokenDataset(self.pretokenized)
    side = self.module.img_size // self.module.input_stride
    tokens.check_matches(f"dataset.pretokenized={self.pretokenized!r}", tokenizer="maskbit", grid=(side, side),
                         bits=self.module.token_size)
    return pipeline.token_train_dataset(
        tokens, batch_size=self.local_batch, seed=self.seed, process_index=self.process_index,
        process_count=self.process_count, random_flip=bool(self.cfg.dataset.preprocessing.get("random_flip", True)),
        overfit=pipeline.overfit_batches(self.cfg.get("training", None)))

  def step(self, state, batch, step_number: int):
    del step_number
    if self.pretokenized:
      return self.step_fn(state, batch)
    return self.step_fn(state, batch, self.tokenizer.params)

  @property
  def use_ema(self) -> bool:
    return self.settings.use_ema

  def visualize(self, state) -> observe.Grid:
    gen = Generator(self.cfg, self.module, host_copy(self.model_params(state)))
    decoded = self.decoded_pairs(gen)
    if decoded is not None and self.process_index == 0:
      observe.save_grid(self.workdir, "decoded", int(jax.device_get(state.step)), observe.Grid(*decoded, 2))
    return self.sample_grid(gen, self.module.nclass)

  def decoded_pairs(self, gen) -> tuple[np.ndarray, list[str]] | None:
    """The reference's "Train Decoded" images (``workdir/images/decoded_<step>.png``): for the first
    ``training.num_generated_images`` images (of the eval set here; the reference takes its training batch),
    their tokens decoded next to the model's arg-max prediction of every token from a training-masked copy."""
    n = int(self.cfg.training.get("num_generated_images", 4))
    if n <= 0:
      return None
    images, labels = self._eval_examples(n)
    # host copies: inside the training mesh the results may span every process's devices
    tokens = np.asarray(host_copy(self.tokenizer.encode(images)))
    targets = split_tokens(tokens.reshape(len(tokens), -1), gen.token_bits, gen.codebook_splits)
    masked, _ = mask_tokens(targets, gen.mask_token, jax.random.key(self.seed), mode=self.settings.mask_schedule)
    logits = gen(np.asarray(host_copy(masked)), labels % gen.nclass)
    predicted = np.asarray(host_copy(combine_tokens(jnp.argmax(logits, axis=-1), gen.token_bits)))
    pairs = np.stack([np.asarray(host_copy(self.tokenizer.decode_tokens(t.reshape(tokens.shape)))) for t in
                      (tokens, predicted)], axis=1).reshape(-1, *images.shape[1:])
    return np.clip(pairs, 0.0, 1.0), [f"{kind} {i}" for i in range(len(tokens)) for kind in ("tokens", "predicted")]

  def evaluate(self, state) -> dict:
    """FID and IS of ``experiment.eval_images`` samples of the EMA weights (``evaluate_samples``); on the
    synthetic set also their class accuracy and the frozen tokenizer's held-out PSNR (``synthetic_figures``)."""
    gen = Generator(self.cfg, self.module, host_copy(self.model_params(state)))
    return {**self.evaluate_samples(gen), **self.synthetic_figures(gen)}

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def export(self, state) -> str:
    return self.export_params(self.model_params(state), "generator", "generator")


def _without_accumulation(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with ``gradient_accumulation_steps = 1``: the jitted steps accumulate over micro-batches
  themselves (one optimizer step per call), so the optimizer must not wrap ``optax.MultiSteps``."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.training.gradient_accumulation_steps = 1
  return out


def make_task(cfg: ml_collections.ConfigDict, mesh, workdir: str) -> _Task:
  """The training task of the config's model family (``registry.Family.task_factory``)."""
  fam = registry.family_of(cfg)
  stage_of(cfg)  # a family without a task says so
  validate_common(cfg)
  return fam.get("task_factory")(cfg, mesh, workdir)


__all__ = ["GeneratorTask", "STAGES", "TokenizerTask", "global_batch_size", "make_task", "stage_of",
           "validate_common"]
