"""BAR generator training as a task of the shared loop (:mod:`maskbit_jax.train.loop`), stage ``bar``.

Two data paths:

* ``dataset.pretokenized``: a token set in the layout of ``python -m
  maskbit_jax.pretokenize`` (ArrayRecord shards of msgpack records +
  ``meta.json``). Records hold ``tokens`` / ``tokens_flipped`` (LFQ indices
  ``[h, w]``, what ``pretokenize`` writes; bit j = channel j) or ``bits`` /
  ``bits_flipped`` (``[cells, K]`` or ``[cells*K]`` 0/1, the reference's BAR-FSQ
  layout). The original or the flipped image is picked with probability 1/2,
  as the reference does.
* otherwise, for a MaskBit LFQ tokenizer only (``model.vq_model.quantizer_type:
  lookup-free``): images from ``dataset.source``, turned into bits by the frozen
  tokenizer (``experiment.vqgan_checkpoint``) inside the jitted step.

Samples drawn every ``experiment.generate_every`` steps decode with the MaskBit
tokenizer (LFQ) or the BAR-FSQ decoder (``experiment.tokenizer_checkpoint``).
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import ml_collections
import numpy as np

from maskbit_jax import bar, paths, runtime, sharding
from maskbit_jax.bar_config import bar_fields
from maskbit_jax.bits import unpack_bits_np
from maskbit_jax.convert.bar_mapping import CHECKPOINT_KIND, bar_param_mapping
from maskbit_jax.data.token_dataset import TokenDataset
from maskbit_jax.distributed import host_copy
from maskbit_jax.models.bar_generator import build_bar_module, init_bar_params
from maskbit_jax.models.layers import jit_init
from maskbit_jax.train import bar_optim, bar_step as bs
from maskbit_jax.train.tasks import _Task


def _with_resolution(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The released BAR configs name the image size ``dataset.preprocessing.crop_size``; the shared task code
  reads ``resolution``. Returns ``cfg`` itself when it has one, else a copy with ``resolution = crop_size``."""
  pre = cfg.dataset.preprocessing
  if "resolution" in pre:
    return cfg
  if "crop_size" not in pre:
    raise ValueError("dataset.preprocessing needs resolution (or the reference's crop_size): the image size")
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.dataset.preprocessing.resolution = int(pre.crop_size)
  return out


def record_bits(ex: dict, flip: bool, token_bits: int) -> np.ndarray:
  """One pretokenized record -> uint8 bits ``[cells*K]`` of the original or the flipped image."""
  if "bits" in ex:
    bits = np.asarray(ex["bits_flipped" if flip else "bits"])
    if bits.size % token_bits:
      raise ValueError(f"a record's bits ({bits.shape}) do not split into {token_bits}-bit tokens")
    return bits.astype(np.uint8).reshape(-1)
  if "tokens" not in ex:
    raise KeyError(f"a pretokenized record needs 'bits' or 'tokens', got keys {sorted(ex)}")
  tokens = np.asarray(ex["tokens_flipped" if flip else "tokens"], np.int64)
  return unpack_bits_np(tokens, token_bits).astype(np.uint8).reshape(-1)


def bit_train_dataset(token_source, *, batch_size: int, seed: int, token_bits: int, process_index: int = 0,
                      process_count: int = 1, random_flip: bool = True, num_threads: int = 8,
                      prefetch_buffer_size: int = 16) -> grain.IterDataset:
  """Batches ``{"bits": uint8 [b, cells*K], "label": int32 [b]}`` of this process from a pretokenized set."""
  if len(token_source) < process_count:
    raise ValueError(f"the token set has {len(token_source)} examples, fewer than the {process_count} processes")

  def load(index, rng):
    ex = token_source[int(index)]
    flip = random_flip and rng.uniform() < 0.5
    return {"bits": record_bits(ex, flip, token_bits), "label": np.int32(ex["label"])}

  ds = grain.MapDataset.range(len(token_source))[process_index::process_count]
  ds = ds.shuffle(seed=seed).repeat().random_map(load, seed=seed + 1)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
  return it.batch(batch_size, drop_remainder=True)


class BarTask(_Task):
  """BAR: the causal bit transformer + MBM head on a frozen tokenizer's bits."""

  stage = "bar"
  log_keys = ("mbm_loss", "masked_bit_acc", "grad_norm")
  evaluation_weights = {"inception_checkpoint": "FID and IS"}
  evaluates_samples = True

  def __init__(self, cfg, mesh, workdir):
    super().__init__(_with_resolution(cfg), mesh, workdir)

    cfg = self.cfg
    dtype, precision = runtime.training(cfg)
    self.module = build_bar_module(bar_fields(cfg), dtype=dtype, precision=precision)
    self.settings = bs.BarSettings.from_config(cfg)
    opt = bar_optim.bar_optimizer_settings(cfg)
    opt["gradient_accumulation_steps"] = 1  # the step accumulates over micro-batches itself
    # the weight-decay groups are decided on the PyTorch names, as the reference does
    self.tx = bar_optim.make_bar_optimizer(**opt, name_fn=bar_param_mapping().torch_key,
                                            stacked_fn=bar_param_mapping().is_stacked)
    self.schedule = bar_optim.bar_schedule_from_config(cfg)
    self.kind = bar.tokenizer_kind(cfg)
    self.pretokenized = str(cfg.dataset.get("pretokenized", "") or "")
    if not self.pretokenized and self.kind != bar.LFQ:
      raise ValueError("BAR on BAR-FSQ tokens trains on a pretokenized set: set dataset.pretokenized (bits of "
                       "every image and its flip); bits made on the fly need a MaskBit lookup-free tokenizer")
    self.tokenizer = self._tokenizer()
    self._check_grid()
    # the frozen params of on-the-fly encoding, placed on the mesh once (not sent with every step)
    self.tokenizer_params = None if self.pretokenized else jax.device_put(
        jax.device_get(self.tokenizer.params), sharding.replicated(mesh))
    self.step_fn, self.state_shardings, self.batch_shardings = bs.make_jitted_step(
        self.module, self.tx, self.settings, mesh, tokenizer=None if self.pretokenized else self.tokenizer.module,
        tokenizer_params=self.tokenizer_params)
    self._bs = bs

  def _tokenizer(self):
    """The frozen tokenizer: encodes on the fly (LFQ) and decodes the samples (both kinds)."""
    exp = self.cfg.get("experiment", None) or {}
    key = "vqgan_checkpoint" if self.kind == bar.LFQ else "tokenizer_checkpoint"
    checkpoint = str(exp.get(key, "") or "")
    if not checkpoint:
      raise ValueError(f"BAR training needs its frozen tokenizer: set experiment.{key} (a released .bin, a "
                       "converted folder, or a stage-I run's export/tokenizer)")
    if not paths.exists(checkpoint):
      raise FileNotFoundError(f"experiment.{key}={checkpoint!r} does not exist")
    # float32 whatever the compute dtype: the bits must be the tokenizer's own; host params (samples decode
    # on the default device)
    tok = bar.load_bar_tokenizer(self.cfg, checkpoint, dtype="float32")
    return dataclasses.replace(tok, params=jax.device_get(tok.params))

  def _check_grid(self) -> None:
    grid = bar.tokenizer_grid(self.tokenizer, self.size)
    if tuple(grid) != tuple(self.module.grid):
      raise ValueError(f"model.generator.image_seq_len gives a {self.module.grid} latent grid but the tokenizer "
                       f"makes {grid} tokens at {self.size} px")

  def init_state(self):
    def make(key):
      k_params, k_state = jax.random.split(key)
      return self._bs.init_train_state(self.tx, init_bar_params(self.module, k_params), k_state,
                                       use_ema=self.settings.use_ema)

    return jit_init(make, out_shardings=self.state_shardings)(jax.random.key(self.seed))

  def dataset(self):
    if not self.pretokenized:
      return self.image_dataset()

    data = self.cfg.dataset
    tokens = TokenDataset(self.pretokenized)
    tokens.check_matches(f"dataset.pretokenized={self.pretokenized!r}", tokenizer={bar.LFQ: "maskbit"}.get(
        self.kind, self.kind), grid=self.module.grid, bits=self.module.token_bits)
    return bit_train_dataset(
        tokens, batch_size=self.local_batch, seed=self.seed,
        token_bits=self.module.token_bits, process_index=self.process_index, process_count=self.process_count,
        random_flip=bool(data.preprocessing.get("random_flip", True)), num_threads=int(data.get("num_threads", 8)),
        prefetch_buffer_size=int(data.get("prefetch_buffer_size", 16)))

  def step(self, state, batch, step_number: int):
    del step_number  # the state carries its own step
    if self.pretokenized:
      return self.step_fn(state, batch)
    return self.step_fn(state, batch, self.tokenizer_params)

  @property
  def use_ema(self) -> bool:
    return self.settings.use_ema

  def visualize(self, state):
    gen = bar.BarModel(self.cfg, self.module, host_copy(self.model_params(state)))
    return self.sample_grid(gen, self.module.num_classes)

  def evaluate(self, state) -> dict:
    """FID (with ``evaluation.ref_stats``) and IS of class-balanced samples, as ``evaluate generator`` gives."""
    gen = bar.BarModel(self.cfg, self.module, host_copy(self.model_params(state)))
    return {**self.evaluate_samples(gen), **self.synthetic_figures(gen)}

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def export(self, state) -> str:
    return self.export_params(self.model_params(state), "bar_generator", CHECKPOINT_KIND)


__all__ = ["BarTask", "bit_train_dataset", "record_bits"]
