"""Capacity plan: parameters, train-state bytes and per-device memory of the released models on candidate meshes.

  python benchmarks/capacity.py                   # compile everything (CPU, ~15 min), write the cache and the doc
  python benchmarks/capacity.py --render-only     # re-render docs/capacity.md from benchmarks/results/capacity.json
  python benchmarks/capacity.py --models maskbit_generator_12bit --batches 32 --no-doc

Method (also written into the doc):

* Parameter, optimizer (AdamW mu + nu) and EMA shapes come from ``jax.eval_shape``
  (nothing is allocated). Their bytes per device on a mesh are exact: every leaf's
  shard shape under the shardings training uses (``sharding.RULES``; optimizer
  moments follow their parameters, dimensions a mesh axis does not divide stay
  replicated).
* Activations and temporaries come from XLA: the jitted train step is lowered with
  abstract inputs carrying their shardings and compiled for 8 simulated CPU devices;
  ``compiled.memory_analysis()`` gives per-device argument, output, alias and temp
  bytes, and peak = arguments + outputs - aliases (the donated state) + temps.
* For a slice of n devices, peak(n) = peak(8) - state(8) + state(n): activations per
  device depend on the per-device batch, not the device count (checked by compiling
  at 4 and 32 devices too; see the validation table).
* The numbers are float32 everywhere (the released recipes train with
  ``mixed_precision: no``) and come from the XLA:CPU compiler, which neither
  rematerialises nor fuses like the TPU and GPU compilers: read them as an upper
  bound of what the step needs, not as what a TPU profile will show.

Models are registered in ``MODELS`` (name -> builder of a ``ModelPlan``). Any flax
module can be planned with ``module_plan`` (state only) or a ``ModelPlan`` with a
``make_step`` (state and compiled memory); BAR models go in ``BAR_MODELS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

MAX_DEVICES = 32
if "jax" not in sys.modules:  # simulated devices for the compiles; must precede the jax import
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={MAX_DEVICES}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.common import RESULTS_DIR, machine  # noqa: E402
from maskbit_jax import sharding  # noqa: E402

GIB = 2.0**30
COMPILE_DEVICES = 8
MESH_MODES = ("data", "fsdp")
CACHE = os.path.join(RESULTS_DIR, "capacity.json")
DOC = os.path.join(REPO, "docs", "capacity.md")


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  devices: int
  hbm_gib: float


TARGETS = (Target("v5p-8", 4, 95), Target("v5p-32", 16, 95), Target("v6e-8", 8, 32), Target("v6e-32", 32, 32),
           Target("8xH100", 8, 80))


@dataclasses.dataclass
class ModelPlan:
  """What the plan needs of one model.

  ``trained``: boxed (logically partitioned) abstract params of every network the
  step trains, by name (each gets AdamW state, and EMA if listed in ``ema``);
  ``txs``: the optax transform of each trained network; ``frozen``: abstract
  variables held replicated and not trained (e.g. the perceptual ResNet50);
  ``make_step(mesh, per_device_batch) -> (jitted step, abstract args)`` or None
  for a state-only plan; ``default_batches``: per-device batches to compile.
  """

  name: str
  kind: str
  trained: dict[str, Any]
  txs: dict[str, optax.GradientTransformation]
  ema: tuple[str, ...] = ()
  frozen: Any = None
  make_step: Callable[[Any, int], tuple[Any, tuple]] | None = None
  default_batches: tuple[int, ...] = ()
  note: str = ""


# -- exact state bytes ------------------------------------------------------------------


def state_layout(plan: ModelPlan, mesh) -> tuple[dict, dict]:
  """(abstract train state, its shardings): params, optimizer states, EMAs of every trained network, and frozen."""
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract, shardings = {}, {}
  for name, boxed in plan.trained.items():
    params = nn.meta.unbox(boxed)
    param_sh = sharding.logical_to_sharding(boxed, mesh)
    opt = jax.eval_shape(plan.txs[name].init, params)
    abstract[f"{name}/params"], shardings[f"{name}/params"] = params, param_sh
    abstract[f"{name}/opt"] = opt
    shardings[f"{name}/opt"] = sharding.optimizer_state_sharding(opt, params, param_sh, mesh)
    if name in plan.ema:
      abstract[f"{name}/ema"], shardings[f"{name}/ema"] = params, param_sh
  if plan.frozen is not None:
    abstract["frozen"] = plan.frozen
    shardings["frozen"] = jax.tree.map(lambda _: replicated, plan.frozen)
  return abstract, shardings


def tree_bytes(abstract) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract)))


def per_device_bytes(abstract, shardings) -> int:
  """Bytes one device holds: each leaf's shard shape (the largest shard, for uneven splits)."""
  leaves = jax.tree.leaves(abstract)
  shards = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  return int(sum(np.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, shards)))


def mesh_for(mode: str, devices: int):
  if mode not in MESH_MODES:
    raise ValueError(f"mesh mode {mode!r}: use one of {MESH_MODES}")
  return sharding.create_mesh({mode: devices}, jax.devices()[:devices])


def state_report(plan: ModelPlan, devices: int, mode: str) -> dict:
  abstract, shardings = state_layout(plan, mesh_for(mode, devices))
  parts = {k: per_device_bytes(abstract[k], shardings[k]) for k in abstract}
  return dict(per_device_state_bytes=sum(parts.values()), per_device_parts=parts)


def param_count(plan: ModelPlan) -> dict[str, int]:
  return {k: int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(v)))) for k, v in plan.trained.items()}


# -- compiled memory --------------------------------------------------------------------


def compiled_memory(plan: ModelPlan, devices: int, mode: str, per_device_batch: int, *, rules: bool = True) -> dict:
  """Per-device bytes XLA assigns to the compiled train step (see the module docstring)."""
  mesh = mesh_for(mode, devices)
  step, args = plan.make_step(mesh, per_device_batch)
  start = time.perf_counter()
  # The rules context makes the models' activation constraints (batch on data+fsdp) real; without it
  # they are no-ops and an fsdp mesh leaves the batch replicated (``rules=False`` measures that).
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES if rules else ()):
    compiled = step.lower(*args).compile()
  m = compiled.memory_analysis()
  peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  return dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
              alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes), peak_bytes=int(peak),
              compile_s=round(time.perf_counter() - start, 1))


def _with_sharding(abstract, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


# -- the released models ----------------------------------------------------------------


def generator_plan(config: str) -> ModelPlan:
  """A MaskBit generator and its stage-II step (``generator_step.make_jitted_step``: what training runs)."""
  import maskbit_jax
  from maskbit_jax.generator import generator_fields
  from maskbit_jax.models.maskbit_transformer import abstract_generator_params, build_generator_module
  from maskbit_jax.train.generator_step import MLMSettings, TrainState, make_jitted_step
  from maskbit_jax.train.optim import make_optimizer

  cfg = maskbit_jax.load_config(os.path.join(REPO, "configs", f"{config}.py"))
  # batched attention: what "auto" picks on TPU and GPU (the CPU default loops over examples)
  module = build_generator_module(generator_fields(cfg)).clone(attention_impl="batched")
  tx = make_optimizer(cfg, kind="mlm")
  boxed = abstract_generator_params(module)

  def make_step(mesh, per_device_batch):
    step, state_sh, batch_sh = make_jitted_step(module, tx, MLMSettings.from_config(cfg), mesh)
    params = nn.meta.unbox(boxed)
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                       opt_state=jax.eval_shape(tx.init, params), ema_params=params,
                       rng=jax.eval_shape(lambda: jax.random.key(0)))
    b = per_device_batch * mesh.size
    grid = int(module.seq_len ** 0.5)
    batch = {"tokens": jax.ShapeDtypeStruct((b, grid, grid), jnp.int32), "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    return step, (_with_sharding(state, state_sh), _with_sharding(batch, batch_sh))

  return ModelPlan(config, "generator", {"generator": boxed}, {"generator": tx}, ema=("generator",),
                   make_step=make_step, default_batches=(16, 32, 64),
                   note="stage II: generator_step.mlm_train_step (the training step itself)")


def tokenizer_proxy_step(state, images, *, tok, disc, resnet, tx_g, tx_d):
  """A stand-in for the stage-I step with its memory-relevant parts (not its exact loss).

  Autoencoder forward and backward with L2 reconstruction, the ResNet50
  perceptual term on input and reconstruction, the quantizer losses and the
  generator's GAN term through the discriminator; then the discriminator's hinge
  loss on real and reconstructed images; AdamW on both and the autoencoder EMA.
  It leaves out what is small (the adaptive GAN weight's last-layer VJP, LeCam).
  """
  from maskbit_jax.losses.perceptual import resnet50_perceptual_loss
  from maskbit_jax.train.optim import ema_update

  def g_loss(g_params):
    recon, result = tok.apply({"params": g_params}, images)
    perceptual = resnet50_perceptual_loss(state["frozen"], images, recon, model=resnet)
    gan = -jnp.mean(disc.apply({"params": state["discriminator/params"]}, recon))
    loss = 4.0 * jnp.mean(jnp.square(recon - images)) + 0.1 * perceptual + 0.02 * gan + result["quantizer_loss"]
    return loss, recon

  (g_value, recon), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state["tokenizer/params"])

  def d_loss(d_params):
    real = disc.apply({"params": d_params}, images)
    fake = disc.apply({"params": d_params}, jax.lax.stop_gradient(recon))
    return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))

  d_value, d_grads = jax.value_and_grad(d_loss)(state["discriminator/params"])
  g_updates, g_opt = tx_g.update(g_grads, state["tokenizer/opt"], state["tokenizer/params"])
  d_updates, d_opt = tx_d.update(d_grads, state["discriminator/opt"], state["discriminator/params"])
  g_params = optax.apply_updates(state["tokenizer/params"], g_updates)
  new = dict(state, **{"tokenizer/params": g_params, "tokenizer/opt": g_opt,
                       "tokenizer/ema": ema_update(state["tokenizer/ema"], g_params, 2),
                       "discriminator/params": optax.apply_updates(state["discriminator/params"], d_updates),
                       "discriminator/opt": d_opt})
  return new, {"g_loss": g_value, "d_loss": d_value}


def tokenizer_plan(config: str) -> ModelPlan:
  """A MaskBit tokenizer with its discriminator, and the stage-I proxy step (``tokenizer_proxy_step``)."""
  import maskbit_jax
  from maskbit_jax.config import vq_model_config
  from maskbit_jax.models.discriminator import abstract_discriminator_params, build_discriminator
  from maskbit_jax.models.resnet50 import ResNet50, abstract_resnet50_variables
  from maskbit_jax.models.tokenizer import abstract_tokenizer_params, build_tokenizer_module
  from maskbit_jax.train.optim import make_optimizer

  cfg = maskbit_jax.load_config(os.path.join(REPO, "configs", f"{config}.py"))
  tok = build_tokenizer_module(vq_model_config(cfg))
  disc = build_discriminator(cfg.model.discriminator)
  resnet = ResNet50()
  trained = {"tokenizer": abstract_tokenizer_params(tok), "discriminator": abstract_discriminator_params(disc)}
  txs = {"tokenizer": make_optimizer(cfg, kind="generator"), "discriminator": make_optimizer(cfg, kind="discriminator")}
  frozen = abstract_resnet50_variables(resnet)
  plan = ModelPlan(config, "tokenizer", trained, txs, ema=("tokenizer",), frozen=frozen, default_batches=(8, 16, 32),
                   note="stage I: tokenizer_proxy_step (memory stand-in, see its docstring)")
  size = int(cfg.dataset.preprocessing.resolution)

  def make_step(mesh, per_device_batch):
    abstract, shardings = state_layout(plan, mesh)
    images_sh = sharding.batch_sharding(mesh, 4)
    fn = lambda s, x: tokenizer_proxy_step(s, x, tok=tok, disc=disc, resnet=resnet, tx_g=txs["tokenizer"],
                                           tx_d=txs["discriminator"])
    step = jax.jit(fn, in_shardings=(shardings, images_sh), out_shardings=(shardings, None), donate_argnums=0)
    images = jax.ShapeDtypeStruct((per_device_batch * mesh.size, size, size, 3), jnp.float32, sharding=images_sh)
    return step, (_with_sharding(abstract, shardings), images)

  plan.make_step = make_step
  return plan


def module_plan(name: str, module: nn.Module, example_args: tuple, tx: optax.GradientTransformation, *,
                kind: str = "other", ema: bool = True) -> ModelPlan:
  """A state-only plan for any flax module (params from ``module.init`` on abstract ``example_args``).

  Give it a ``make_step`` (see ``generator_plan``) to get compiled memory as well.
  """
  boxed = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *example_args)["params"]
  return ModelPlan(name, kind, {name: boxed}, {name: tx}, ema=(name,) if ema else ())


GENERATOR_CONFIGS = tuple(f"maskbit_generator_{b}bit" for b in (10, 12, 14, 16, 18))
TOKENIZER_CONFIGS = tuple(f"maskbit_tokenizer_{b}bit" for b in (10, 12, 14, 16, 18))
MODELS: dict[str, Callable[[], ModelPlan]] = {
    **{c: (lambda c=c: generator_plan(c)) for c in GENERATOR_CONFIGS},
    **{c: (lambda c=c: tokenizer_plan(c)) for c in TOKENIZER_CONFIGS},
}


def bar_plan(config: str, batches: tuple[int, ...]) -> ModelPlan:
  """A BAR generator and its pretokenized-bits train step (``bar_step.make_jitted_step``), bf16 compute as
  released; the AdamW groups of the reference; no EMA (the released recipe keeps none)."""
  import maskbit_jax
  from maskbit_jax.bar_config import bar_fields
  from maskbit_jax.convert.bar_mapping import bar_param_mapping
  from maskbit_jax.models.bar_generator import abstract_bar_params, build_bar_module
  from maskbit_jax.train import bar_optim
  from maskbit_jax.train import bar_step as bs
  from maskbit_jax import runtime

  cfg = maskbit_jax.load_config(os.path.join(REPO, "configs", f"{config}.py"))
  dtype, _ = runtime.training(cfg)
  module = build_bar_module(bar_fields(cfg), dtype=dtype)
  opt = bar_optim.bar_optimizer_settings(cfg)
  opt["gradient_accumulation_steps"] = 1
  tx = bar_optim.make_bar_optimizer(**opt, name_fn=bar_param_mapping().torch_key,
                                  stacked_fn=bar_param_mapping().is_stacked)
  settings = bs.BarSettings.from_config(cfg)
  boxed = abstract_bar_params(module)

  def make_step(mesh, per_device_batch):
    step, state_sh, batch_sh = bs.make_jitted_step(module, tx, settings, mesh)
    params = nn.meta.unbox(boxed)
    state = bs.BarTrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                             opt_state=jax.eval_shape(tx.init, params),
                             ema_params=params if settings.use_ema else None,
                             rng=jax.eval_shape(lambda: jax.random.key(0)))
    b = per_device_batch * mesh.size
    batch = {"bits": jax.ShapeDtypeStruct((b, module.image_seq_len * module.token_bits), jnp.int32),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    return step, (_with_sharding(state, state_sh), _with_sharding(batch, batch_sh))

  return ModelPlan(config, "bar", {"generator": boxed}, {"generator": tx},
                   ema=("generator",) if settings.use_ema else (),
                   make_step=make_step, default_batches=batches,
                   note="BAR: bar_step.bar_train_step on pretokenized bits, bf16 compute, float32 params")


# BAR: every released size, compiled at the recipe's per-GPU batch (bar.md: 128 for B, 64 for L, 32 for
# L-512) and at a quarter or half of it, the fallback for smaller chips.
BAR_MODELS: dict[str, Callable[[], ModelPlan]] = {
    **{c: (lambda c=c: bar_plan(c, (32, 128))) for c in ("bar_b", "bar_b_patch2", "bar_b_patch4")},
    "bar_l": lambda: bar_plan("bar_l", (32, 64)),
    "bar_l_res512": lambda: bar_plan("bar_l_res512", (16, 32)),
}
# No "+remat" rows: XLA:CPU gives rematerialisation no saving (bar_b_patch4 at 1 device, 16 per device:
# 3.22 GiB of temporaries without, 3.42 GiB with; a 24-layer toy MLP: 292 MiB without, 384 MiB with
# jax.checkpoint), so its effect can only be read from an accelerator's compile.
MODELS.update(BAR_MODELS)
# Compiled memory of the tokenizers is measured on this one: the sizes differ only in the encoder's last
# and the decoder's first convolution (token_size channels), so their activations are the same to <0.1 %.
TOKENIZER_COMPILED = "maskbit_tokenizer_12bit"
VALIDATE = ("maskbit_generator_12bit", "fsdp", 32, (4, 32))


# -- running ----------------------------------------------------------------------------


def collect(models: list[str], batches: dict[str, tuple[int, ...]] | None, validate: bool) -> dict:
  records = {"models": {}, "validation": [], "machine": machine(), "compile_devices": COMPILE_DEVICES}
  for name in models:
    plan = MODELS[name]()
    rec = dict(kind=plan.kind, note=plan.note, params=param_count(plan),
               state_total_bytes={k: tree_bytes(v) for k, v in state_layout(plan, mesh_for("data", 1))[0].items()},
               state={}, compiled={})
    for mode in MESH_MODES:
      for n in sorted({t.devices for t in TARGETS} | {COMPILE_DEVICES}):
        rec["state"][f"{mode}:{n}"] = state_report(plan, n, mode)
    compile_here = plan.make_step is not None and (plan.kind != "tokenizer" or name == TOKENIZER_COMPILED)
    for b in ((batches or {}).get(plan.kind) or plan.default_batches) if compile_here else ():
      for mode in MESH_MODES:
        m = compiled_memory(plan, COMPILE_DEVICES, mode, b)
        rec["compiled"][f"{mode}:{b}"] = m
        print(f"{name} {mode} b={b}: peak {m['peak_bytes'] / GIB:.2f} GiB/device "
              f"(temp {m['temp_bytes'] / GIB:.2f}), compiled in {m['compile_s']} s", flush=True)
    records["models"][name] = rec
  if validate and VALIDATE[0] in models:
    name, mode, b, _ = VALIDATE
    with_rules = records["models"][name]["compiled"].get(f"{mode}:{b}") or compiled_memory(MODELS[name](), COMPILE_DEVICES, mode, b)
    without = compiled_memory(MODELS[name](), COMPILE_DEVICES, mode, b, rules=False)
    records["rules_ablation"] = dict(model=name, mode=mode, per_device_batch=b, devices=COMPILE_DEVICES,
                                     temp_bytes_with_rules=with_rules["temp_bytes"],
                                     temp_bytes_without_rules=without["temp_bytes"])
    print(f"rules ablation {name} {mode} b={b}: temporaries {without['temp_bytes'] / GIB:.1f} GiB without the "
          f"logical-axis rules context, {with_rules['temp_bytes'] / GIB:.1f} GiB with it", flush=True)
    name, mode, b, counts = VALIDATE
    plan = MODELS[name]()
    base = records["models"][name]["compiled"].get(f"{mode}:{b}") or compiled_memory(plan, COMPILE_DEVICES, mode, b)
    base_state = records["models"][name]["state"][f"{mode}:{COMPILE_DEVICES}"]["per_device_state_bytes"]
    for n in counts:
      m = compiled_memory(plan, n, mode, b)
      state_n = state_report(plan, n, mode)["per_device_state_bytes"]
      predicted = base["peak_bytes"] - base_state + state_n
      records["validation"].append(dict(model=name, mode=mode, per_device_batch=b, devices=n,
                                        compiled_peak_bytes=m["peak_bytes"], predicted_peak_bytes=predicted))
      print(f"validation {name} {mode} b={b} n={n}: compiled {m['peak_bytes'] / GIB:.2f} GiB, "
            f"extrapolated from {COMPILE_DEVICES}: {predicted / GIB:.2f} GiB", flush=True)
  return records


def _gib(x: float) -> str:
  return f"{x / GIB:.2f}"


def _fits(peak: float, hbm_gib: float) -> str:
  if peak <= 0.9 * hbm_gib * GIB:
    return "yes"
  return "tight" if peak <= hbm_gib * GIB else "**no**"


def _compiled_source(records: dict, name: str) -> tuple[str, dict] | None:
  rec = records["models"][name]
  if rec["compiled"]:
    return name, rec
  if rec["kind"] == "tokenizer" and TOKENIZER_COMPILED in records["models"]:
    return TOKENIZER_COMPILED, records["models"][TOKENIZER_COMPILED]
  return None


def _families(records: dict) -> dict[str, list[str]]:
  """Models grouped by kind and name stem: maskbit_generator_{10..18}bit -> one family."""
  import re

  groups: dict[str, list[str]] = {}
  for name in records["models"]:
    stem = re.sub(r"_\d+bit$", "", name)
    groups.setdefault(stem, []).append(name)
  out = {}
  for stem, names in groups.items():
    bits = [re.search(r"_(\d+)bit$", n) for n in names]
    if len(names) > 1 and all(bits):
      nums = sorted(int(m.group(1)) for m in bits)
      out[f"{stem}_{{{','.join(map(str, nums))}}}bit"] = names
    else:
      out.update({n: [n] for n in names})
  return out


def _conclusions(records: dict) -> str:
  """The reading of this run's tables (only the parts whose numbers were measured)."""
  models, out = records["models"], []
  gen, tok = models.get("maskbit_generator_12bit"), models.get(TOKENIZER_COMPILED)
  if gen and {"data:16", "data:32"} <= set(gen["compiled"]):
    state = gen["state"]["data:8"]["per_device_state_bytes"]
    per_example = (gen["compiled"]["data:32"]["temp_bytes"] - gen["compiled"]["data:16"]["temp_bytes"]) / 16
    out.append(
        f"* **Generators** (all five sizes within 0.3 % of each other): the float32 train state is "
        f"{_gib(state)} GiB, the activations about {per_example / GIB:.2f} GiB per example. The recipe's 32 "
        f"examples per device ({_gib(gen['compiled']['data:32']['peak_bytes'])} GiB) fit v5p and H100 with a plain "
        f"data mesh; on v6e (32 GiB) use 16 per device ({_gib(gen['compiled']['data:16']['peak_bytes'])} GiB) with "
        f"twice the chips or `training.gradient_accumulation_steps=2` for the same global batch (or bf16 "
        f"compute / rematerialisation, not measured here). fsdp only removes the {_gib(state)} GiB of state: "
        f"the 305M-parameter MaskBit does not need it; it is there for larger (BAR) models.")
  if tok and {"data:8", "fsdp:8"} <= set(tok["compiled"]):
    out.append(
        f"* **Tokenizers** (state {_gib(tok['state']['data:8']['per_device_state_bytes'])} GiB plus the frozen "
        f"ResNet50): 256 px activations dominate. 8 images per device need "
        f"{_gib(tok['compiled']['data:8']['peak_bytes'])} GiB, the recipe's 16 "
        f"{_gib(tok['compiled'].get('data:16', {}).get('peak_bytes', float('nan')))} GiB (v5p, H100; v6e takes 8). "
        f"Use a data mesh: an fsdp mesh needs more, not less ({_gib(tok['compiled']['fsdp:8']['peak_bytes'])} GiB "
        f"at 8 per device). Its conv kernels are split on output channels (`conv_out` -> fsdp) and the conv "
        f"models pin no batch sharding on their activations (no `with_logical_constraint`), so XLA's layout "
        f"choice costs more temporaries than the sharded state saves.")
  a = records.get("rules_ablation")
  if a:
    out.append(
        f"* **Lower the train step under `nn.logical_axis_rules(sharding.RULES)`.** Without it the models' "
        f"`with_logical_constraint` calls are no-ops and an fsdp mesh replicates the batch: "
        f"{_gib(a['temp_bytes_without_rules'])} GiB of temporaries instead of {_gib(a['temp_bytes_with_rules'])} GiB "
        f"({a['model']}, {a['mode']}={a['devices']}, {a['per_device_batch']} per device).")
  return "\n".join(out) if out else "(no compiled numbers in this run)"


def _largest_batch(fixed: float, per_example: float, hbm_gib: float) -> int:
  """The largest per-device batch whose peak stays below 90 % of HBM (0 when none does)."""
  room = 0.9 * hbm_gib * GIB - fixed
  return max(int(room // per_example), 0) if per_example > 0 else 0


def _bar_section(records: dict) -> str:
  """Per BAR model and mesh: activations per example and the fixed part (from two compiled batches), the
  largest per-device batch each target holds, and whether the recipe's per-GPU batch fits."""
  rows = []
  for name, rec in records["models"].items():
    if rec["kind"] != "bar" or len(rec["compiled"]) < 2:
      continue
    for mode in MESH_MODES:
      pts = sorted((int(k.split(":")[1]), m["peak_bytes"]) for k, m in rec["compiled"].items()
                   if k.startswith(mode + ":"))
      if len(pts) < 2:
        continue
      (b0, p0), (b1, p1) = pts[0], pts[-1]
      per_example = (p1 - p0) / (b1 - b0)
      act0 = p0 - rec["state"][f"{mode}:{COMPILE_DEVICES}"]["per_device_state_bytes"] - b0 * per_example
      cells = []
      for t in TARGETS:
        fixed = act0 + rec["state"][f"{mode}:{t.devices}"]["per_device_state_bytes"]
        cells.append(str(_largest_batch(fixed, per_example, t.hbm_gib)))
      label = "data" if mode == "data" else "fsdp (all devices)"
      rows.append(f"| {name} | {label} | {per_example / GIB:.3f} | " + " | ".join(cells) + " |")
  if not rows:
    return "No BAR model was compiled in this run (`BAR_MODELS` in `benchmarks/capacity.py`)."
  head = ["model", "mesh", "GiB per example"] + [f"{t.name}" for t in TARGETS]
  table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + rows)
  return (
      "BAR's recipe (`../shared/specs/bar.md`): global batch 2048, 128 per GPU for the B models, 64 for L, "
      "32 for L-512, bf16 compute, no EMA. Each row is fitted to two compiled batches (the detail table "
      "above: peak = fixed + batch x per-example, a straight line through the two) and "
      "gives the largest per-device batch under 90 % of HBM. Where the recipe's batch does not fit, keep "
      "the global batch with `training.gradient_accumulation_steps` (or more chips), or rematerialise "
      "the blocks (`--config.model.generator.use_checkpoint=True`). That last saving cannot be read from "
      "these compiles: XLA:CPU gives rematerialisation none (bar_b_patch4, 16 per device on one device: "
      "3.22 GiB of temporaries without, 3.42 GiB with; a 24-layer toy MLP: 292 MiB without, 384 MiB "
      "with `jax.checkpoint`). XLA:CPU also keeps float32 copies of bf16 matmul operands and weights "
      "and fuses little, so a GPU/TPU holds more than these upper bounds (not measured here: no GPU was "
      "available). An fsdp mesh costs BAR-B, L and L-512 more temporaries than it saves in state (the "
      "all-gathered weights of every block stay live for the backward pass); it pays only where the "
      "state dominates, B/2 and B/4 at 32 per device. The attention scores are materialised "
      "(`[B, heads, T, T]` per block, kept for the backward pass): fitting b T + c T^2 per example to "
      "L (T = 288) and L-512 (T = 1056) gives c = 8 bytes per head and position pair per block (two "
      "float32 copies), about 4.3 of L-512's 10.1 GiB per example; a fused (flash) attention kernel on "
      "the accelerator would remove them.\n\n" + table)


def render(records: dict) -> str:
  models = records["models"]
  lines = ["| model | trained parameters | params + AdamW + EMA (+ frozen) | per device, data mesh | "
           "per device, fsdp=8 | per device, fsdp=32 |", "|---|---|---|---|---|---|"]
  for name, rec in models.items():
    params = " + ".join(f"{k} {v / 1e6:.1f}M" for k, v in rec["params"].items())
    total = sum(rec["state_total_bytes"].values())
    lines.append(f"| {name} | {params} | {_gib(total)} GiB | "
                 f"{_gib(rec['state']['data:8']['per_device_state_bytes'])} GiB | "
                 f"{_gib(rec['state']['fsdp:8']['per_device_state_bytes'])} GiB | "
                 f"{_gib(rec['state']['fsdp:32']['per_device_state_bytes'])} GiB |")
  state_table = "\n".join(lines)

  head = ["models (largest of the family)", "mesh", "batch/device"] + [
      f"{t.name} ({t.devices}x{t.hbm_gib:g} GiB)" for t in TARGETS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for family, names in _families(records).items():
    peaks: dict[tuple[str, int], list[list[float]]] = {}
    for name in names:
      src = _compiled_source(records, name)
      if src is None:
        continue
      for key, m in src[1]["compiled"].items():
        mode, b = key.split(":")
        act = m["peak_bytes"] - src[1]["state"][f"{mode}:{COMPILE_DEVICES}"]["per_device_state_bytes"]
        row = [act + models[name]["state"][f"{mode}:{t.devices}"]["per_device_state_bytes"] for t in TARGETS]
        peaks.setdefault((mode, int(b)), []).append(row)
    for (mode, b), rows in sorted(peaks.items()):
      worst = np.max(np.asarray(rows), axis=0)
      cells = [f"{_gib(p)} ({_fits(p, t.hbm_gib)})" for p, t in zip(worst, TARGETS)]
      label = "data" if mode == "data" else "fsdp (all devices)"
      lines.append(f"| {family} | {label} | {b} | " + " | ".join(cells) + " |")
  memory_table = "\n".join(lines)

  lines = ["| model | mesh | batch/device | devices | compiled peak | extrapolated from 8 | error |", "|---|---|---|---|---|---|---|"]
  for v in records["validation"]:
    err = (v["predicted_peak_bytes"] - v["compiled_peak_bytes"]) / v["compiled_peak_bytes"]
    lines.append(f"| {v['model']} | {v['mode']} | {v['per_device_batch']} | {v['devices']} | "
                 f"{_gib(v['compiled_peak_bytes'])} GiB | {_gib(v['predicted_peak_bytes'])} GiB | {err:+.1%} |")
  validation_table = "\n".join(lines)

  detail = ["| model | mesh | batch/device | arguments | outputs | aliased (donated) | temporaries | peak | compile s |",
            "|---|---|---|---|---|---|---|---|---|"]
  for name, rec in models.items():
    for key, m in rec["compiled"].items():
      mode, b = key.split(":")
      detail.append(f"| {name} | {mode}={COMPILE_DEVICES} | {b} | {_gib(m['argument_bytes'])} | {_gib(m['output_bytes'])} | "
                    f"{_gib(m['alias_bytes'])} | {_gib(m['temp_bytes'])} | {_gib(m['peak_bytes'])} | {m['compile_s']} |")
  detail_table = "\n".join(detail)
  mach = records["machine"]
  a = records.get("rules_ablation")
  ablation = ("not measured in this run" if a is None else
              f"{a['model']}, {a['mode']}={a['devices']}, batch {a['per_device_batch']}/device: "
              f"{_gib(a['temp_bytes_without_rules'])} GiB of temporaries instead of {_gib(a['temp_bytes_with_rules'])} GiB")
  return DOC_TEMPLATE.format(state_table=state_table, memory_table=memory_table, validation_table=validation_table,
                             detail_table=detail_table, jax=mach.get("jax"), commit=mach.get("commit"),
                             cpu=mach.get("cpu"), tok=TOKENIZER_COMPILED, n=COMPILE_DEVICES, ablation=ablation,
                             conclusions=_conclusions(records), bar_section=_bar_section(records))


DOC_TEMPLATE = """# Capacity plan

How much memory each released MaskBit and BAR model needs to train, per device, on candidate
TPU slices and an 8xH100 node, for a data-parallel mesh (`{{"data": n}}`: every device
holds the whole train state) and a fully sharded one (`{{"fsdp": n}}`: parameters,
AdamW moments and EMA split over all devices, `sharding.RULES`). Written by
`python benchmarks/capacity.py` (jax {jax}, commit {commit}, on {cpu}); the raw numbers
are in `benchmarks/results/capacity.json`.

## Method

* **State, exact.** Parameter shapes from `jax.eval_shape` of each model's `init`
  (nothing allocated); optimizer state from `jax.eval_shape(tx.init)` with the
  released recipe's optax transform (`train.optim.make_optimizer`: AdamW mu and nu,
  gradient clipping, counts); EMA = one more copy of the trained parameters. Per
  device: the sum of every leaf's shard shape under the shardings training uses
  (dimensions a mesh axis does not divide stay replicated, as `sharding.logical_to_sharding` does).
* **Activations and temporaries, compiled.** The train step is lowered with abstract
  inputs that carry their shardings (`jax.ShapeDtypeStruct(..., sharding=...)`) and
  compiled by XLA for {n} simulated CPU devices; `compiled.memory_analysis()` gives
  per-device argument, output, alias and temp bytes, and
  peak = arguments + outputs - aliased (the donated state) + temporaries.
  Generators: the real stage-II step (`generator_step.make_jitted_step`, batched attention as on
  accelerators). Tokenizers: a stage-I stand-in with the same networks
  (`benchmarks/capacity.py:tokenizer_proxy_step`: autoencoder, ResNet50 perceptual
  loss, discriminator forward/backward for both losses, two AdamW, EMA), compiled for
  `{tok}` only; the other bit widths differ in one convolution's channels.
* **Other device counts.** peak(n) = peak({n}) - state({n}) + state(n): the per-device
  activations depend on the per-device batch, not on the device count. The validation
  table compares this with a direct compile.
* **Caveats.** Everything is float32 (the recipes' `mixed_precision: no`); XLA:CPU
  neither rematerialises nor fuses like the TPU/GPU compilers, so read the peaks as
  upper bounds (bf16 compute and rematerialisation would cut the activation part).
  The step is lowered under `nn.logical_axis_rules(sharding.RULES)`: without that
  context the models' activation constraints are no-ops, and on an fsdp mesh XLA then
  keeps the batch replicated ({ablation}). "yes" = below 90 % of HBM, "tight" = below 100 %.

## Reading the tables

{conclusions}

## Parameters and train state

{state_table}

## Per-device peak memory (GiB) by slice

v5p: 95 GiB HBM per chip; v6e: 32 GiB; H100: 80 GiB. v5p-8 has 4 chips, v5p-32 16, v6e-8 8,
v6e-32 32 (one process per host in every case; the mesh spans all chips). Each cell is the
largest member of the family (per-size numbers: the last table).

{memory_table}

## Validation of the extrapolation

{validation_table}

## Compiled memory at {n} devices (GiB per device)

{detail_table}

## BAR: the largest per-device batch

{bar_section}

## Two slices: 2x v5e-256 over DCN

A multi-slice job joins the slices over the data-center network (DCN), which is far slower than
the chips' interconnect (ICI) within a slice. `runtime.mesh` gives each axis's size within one
slice, `runtime.dcn_mesh` its size across slices (default 1 each); an axis of the mesh is their
product, the DCN part outermost (`sharding.create_mesh`, via `mesh_utils.create_hybrid_device_mesh`;
within a slice `mesh_utils.create_device_mesh` follows the torus). Only the data axis should cross
DCN: once per step it all-reduces the gradients (1.2 GB for the 305M-parameter generator in
float32), while fsdp all-gathers the weights in every layer and stays on ICI.

v5e: 16 GiB HBM per chip, 256 chips (64 hosts of 4) per slice, 512 chips in all. The sizes below
are read off the tables above (state per device + about 1.20 GiB per example for the generators,
about 2.04 GiB per 256 px image for the tokenizer, below 90 % of HBM), not compiled for v5e:

| stage | mesh (ICI, per slice) | dcn_mesh | batch/device | global batch | per-device peak (estimate) |
|---|---|---|---|---|---|
| maskbit_generator_12bit | data=16, fsdp=16 | data=2 | 8 | 4096 | about 11.0 GiB (fsdp=16: 0.28 GiB of state) |
| maskbit_generator_12bit | data=256 | data=2 | 8 | 4096 | about 14.1 GiB (88 %: little headroom) |
| maskbit_tokenizer_12bit | data=256 | data=2 | 4 | 2048 | about 9.8 GiB |

Start both slices as one multi-slice queued resource (`gcloud compute tpus queued-resources create
... --accelerator-type v5litepod-256 --node-count 2`) and run the same command on every worker of
both slices; `maskbit_jax.distributed` finds the job through jax's Cloud TPU detection, and the
devices name their slice (`slice_index`):

    python -m maskbit_jax.train --config configs/maskbit_generator_12bit.py --workdir gs://BUCKET/gen12 \\
        --config.experiment.vqgan_checkpoint=gs://BUCKET/tok12/export/tokenizer \\
        --config.runtime.dcn_mesh.data=2 --config.runtime.mesh.data=16 --config.runtime.mesh.fsdp=16 \\
        --config.training.per_gpu_batch_size=8

For the tokenizer: `--config.runtime.dcn_mesh.data=2 --config.runtime.mesh.data=256
--config.training.per_gpu_batch_size=4`. A product that does not match fails at start-up in one
line, e.g. `runtime.dcn_mesh ... spans 2 slices, the devices are in 1 slices`; devices of two
slices without `runtime.dcn_mesh` are refused as well. The global batch is per device x 512
(or set `training.global_batch_size`).
Where the devices name no slices (GPU nodes, CPU processes), `runtime.dcn_mesh` splits across
processes; `tests/test_distributed.py` builds such a mesh over 2 processes.
"""


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="all", help="comma list of names in MODELS, or all")
  p.add_argument("--batches", default=None, help="per-device batches to compile, e.g. 32,128 (default: per kind)")
  p.add_argument("--no-validate", action="store_true")
  p.add_argument("--render-only", action="store_true", help="re-render the doc from the cache")
  p.add_argument("--no-doc", action="store_true")
  args = p.parse_args(argv)
  if args.render_only:
    with open(CACHE) as f:
      records = json.load(f)
  else:
    models = list(MODELS) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
      raise SystemExit(f"unknown models {unknown}; known: {sorted(MODELS)}")
    batches = None
    if args.batches:
      b = tuple(int(x) for x in args.batches.split(","))
      batches = {"generator": b, "tokenizer": b, "bar": b}
    records = collect(models, batches, validate=not args.no_validate)
    if args.models != "all" and os.path.exists(CACHE):  # a partial run updates its models in the cache
      with open(CACHE) as f:
        cached = json.load(f)
      cached["models"].update(records["models"])
      records = dict(cached, machine=records["machine"])
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(CACHE, "w") as f:
      json.dump(records, f, indent=1)
  text = render(records)
  if not args.no_doc:
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
      f.write(text)
    print(f"wrote {DOC}")
  else:
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
