"""maskbit_jax beside the PyTorch MaskBit reference: same machine, same inputs, same sizes.

  python benchmarks/compare_reference.py --reference /path/to/maskbit              # full size (accelerators)
  python benchmarks/compare_reference.py --reference /path/to/maskbit --reduced    # CPU: reduced widths
  python benchmarks/compare_reference.py --reference /path/to/maskbit --reduced --rows encode,decode --threads 2

``--reference`` is a checkout of github.com/markweberdev/maskbit (``modeling/`` and
``configs/`` suffice; torch needed, torchvision not: the perceptual network is left
out on both sides). Rows (``--rows``, default all):

  encode, decode       the tokenizer on random images (inference)
  forward              one generator forward on masked split tokens (inference)
  sampling             full guided MaskGIT sampling (the config's released settings, 64 steps) + decode
  train_tokenizer      one stage-I step from ``discriminator_start``: tokenizer forward, VQGAN loss
                       (reconstruction, quantizer + entropy, GAN term, no perceptual net), backward,
                       clipping, AdamW, EMA; then the discriminator's loss (+ LeCam), backward, AdamW
  train_generator      one stage-II step: frozen tokenizer encode, masking, generator forward,
                       MLM loss, backward, clipping, AdamW, EMA

Both sides get random weights of the same config (``configs/maskbit_tokenizer_12bit.py`` and
``configs/maskbit_generator_12bit.py``, or with ``--reduced`` the reduced widths and 128 px of
``benchmarks/train.py``'s ``REDUCED``, which the record states) and the same inputs. Ours: the
code of ``benchmarks/tokenizer.py`` (codec), ``benchmarks/sampling.py`` (sampling) and
``benchmarks/train.py`` (``make_task`` + ``task.step``). Inference rows: our runs and the
reference's interleaved, minimum over ``--repeats`` after a warm-up (compile) call; train rows:
median step time after a compile + warm-up step (``benchmarks/train.py``'s method on both sides).
The ratio is ours / reference speed (> 1: we are faster). One record per run is appended to
``benchmarks/results/compare_reference.jsonl`` with the machine and the versions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.common import allow_reference_tf32, append_result, machine, time_call, torch_precision  # noqa: E402
from benchmarks.sampling import jax_runner, seconds_for, time_interleaved  # noqa: E402
from benchmarks.tokenizer import _stub_torchvision_if_missing  # noqa: E402

ROWS = ("encode", "decode", "forward", "sampling", "train_tokenizer", "train_generator")
# Batches per row: (full size, --reduced).
BATCHES = dict(encode=(4, 4), decode=(4, 4), forward=(32, 8), sampling=(8, 4), train_tokenizer=(16, 2),
               train_generator=(64, 8))


# ---------------------------------------------------------------------------------------------- configs

def our_configs(reduced: bool):
  """(tokenizer config, generator config, the overrides applied): ours, and the source of the reference's."""
  import maskbit_jax
  from benchmarks.train import CONFIGS, REDUCED

  tok_over = list(REDUCED["tokenizer"]) if reduced else []
  gen_over = (list(REDUCED["generator"]) + [o for o in REDUCED["tokenizer"] if "vq_model" in o]) if reduced else []
  tok_cfg = maskbit_jax.load_config(os.path.join(REPO, CONFIGS["tokenizer"]), tok_over)
  gen_cfg = maskbit_jax.load_config(os.path.join(REPO, CONFIGS["generator"]), gen_over)
  return tok_cfg, gen_cfg, dict(tokenizer=tok_over, generator=gen_over)


def _omega(section):
  from omegaconf import OmegaConf

  return OmegaConf.create(section.to_dict())


# ---------------------------------------------------------------------------------------------- reference side

class Reference:
  """The reference's modules built from our configs (same key names), on ``device``."""

  def __init__(self, path: str, device: str, threads: int, dtype: str = "float32"):
    import torch

    if not os.path.isdir(os.path.join(path, "modeling")):
      raise FileNotFoundError(f"--reference {path}: no modeling/ folder; pass a checkout of markweberdev/maskbit")
    sys.path.insert(0, os.path.abspath(path))
    _stub_torchvision_if_missing()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    allow_reference_tf32(device)
    self.torch, self.device, self.path, self.dtype = torch, torch.device(device), path, dtype

  def precision(self):
    """The reference's compute precision, as a context (bfloat16: autocast, as its scripts' mixed precision)."""
    return torch_precision(str(self.device), self.dtype)

  def sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def tokenizer(self, cfg):
    from modeling.conv_vqgan import ConvVQModel

    vq = _omega(cfg.model.vq_model)
    if vq.quantizer_type == "lookup-free":
      vq.codebook_size = 2**vq.token_size
    return ConvVQModel(vq).to(self.device)

  def generator(self, cfg):
    from modeling.bert import LFQBert

    vq, mlm = cfg.model.vq_model, cfg.model.mlm_model
    res = int(cfg.dataset.preprocessing.resolution)
    stride = 2 ** (int(vq.num_resolutions) - 1)
    return LFQBert(img_size=res, hidden_dim=mlm.hidden_dim, codebook_size=2**vq.token_size,
                   codebook_splits=mlm.codebook_splits, depth=mlm.depth, heads=mlm.heads, mlp_dim=mlm.mlp_dim,
                   dropout=mlm.dropout, nclass=int(cfg.model.nclass), input_stride=stride,
                   use_prenorm=mlm.use_prenorm).to(self.device)

  def adamw(self, params, cfg, lr_key="learning_rate"):
    p = cfg.optimizer.params
    return self.torch.optim.AdamW(params, lr=float(p[lr_key]), betas=(p.beta1, p.beta2),
                                  weight_decay=p.weight_decay, eps=p.epsilon)


def reference_codec(ref: Reference, cfg, images: np.ndarray):
  """(encode(), decode()) of the reference tokenizer, inference, blocking."""
  torch = ref.torch
  model = ref.tokenizer(cfg).eval()
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(ref.device)
  with torch.no_grad():
    tokens = model.encode(x)[1]["min_encoding_indices"].reshape(x.shape[0], -1)

  def encode(_=None):
    with torch.no_grad(), ref.precision():
      model.encode(x)
    ref.sync()

  def decode(_=None):
    with torch.no_grad(), ref.precision():
      model.decode_tokens(tokens)
    ref.sync()

  return encode, decode


def reference_forward(ref: Reference, cfg, tokens: np.ndarray, labels: np.ndarray):
  torch = ref.torch
  gen = ref.generator(cfg).eval()
  t = torch.from_numpy(tokens).long().to(ref.device)
  lab = torch.from_numpy(labels).long().to(ref.device)
  drop = torch.zeros(len(labels), dtype=torch.bool, device=ref.device)

  def run(_=None):
    with torch.no_grad(), ref.precision():
      gen(t, lab.clone(), drop)  # the reference writes into the labels it is given
    ref.sync()

  return run


def reference_sampler(ref: Reference, cfg, batch: int, settings: dict):
  """``run(num_steps)``: the reference ``sample()`` (generator + decode) on the same settings."""
  from modeling.modules.sampling import sample as ref_sample

  torch = ref.torch
  tok, gen = ref.tokenizer(cfg).eval(), ref.generator(cfg).eval()
  vq, mlm = cfg.model.vq_model, cfg.model.mlm_model
  side = int(np.sqrt(gen.seq_len))
  labels = (torch.arange(batch) % int(cfg.model.nclass)).to(ref.device)

  def run(num_steps):
    with torch.no_grad(), ref.precision():
      ref_sample(gen, tok, num_samples=batch, labels=labels.clone(), num_steps=num_steps, mask_token=gen.mask_token,
                 patch_size=side, codebook_size=2**vq.token_size, codebook_splits=mlm.codebook_splits, **settings)
    ref.sync()

  return run


def reference_tokenizer_step(ref: Reference, cfg, images: np.ndarray):
  """``step()``: one stage-I step of ``scripts/train_tokenizer.py`` from ``discriminator_start``, no perceptual net."""
  from modeling.modules import EMAModel
  from modeling.modules import losses as ref_losses

  torch = ref.torch

  class NoPerceptual(torch.nn.Module):  # perceptual_weight 0 on both sides (ours skips the network)
    def forward(self, inputs, reconstructions):
      return torch.zeros((), device=inputs.device)

  ref_losses.create_perception_loss = lambda *a, **k: NoPerceptual()
  loss_cfg = _omega(cfg.losses)
  loss_cfg.perceptual_weight, loss_cfg.discriminator_start = 0.0, 0
  model = ref.tokenizer(cfg).train()
  loss_module = ref_losses.VQGANLoss(_omega(cfg.model.discriminator), loss_cfg).to(ref.device).train()
  opt = ref.adamw(model.parameters(), cfg)
  disc_opt = ref.adamw(loss_module.parameters(), cfg, "discriminator_learning_rate")
  ema = EMAModel(model.parameters(), decay=0.999)
  clip = float(cfg.training.max_grad_norm)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(ref.device)
  step = [0]

  def run(_=None):
    with ref.precision():
      recon, extra = model(x)
      loss, _ = loss_module(x, recon, extra, step[0], last_layer=model.get_last_layer(), mode="gen")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.step(model.parameters())
    with ref.precision():
      d_loss, _ = loss_module(x, recon, extra, step[0], last_layer=model.get_last_layer(), mode="disc")
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(loss_module.parameters(), clip)
    disc_opt.step()
    disc_opt.zero_grad(set_to_none=True)
    step[0] += 1
    ref.sync()

  return run


def reference_generator_step(ref: Reference, cfg, images: np.ndarray, labels: np.ndarray):
  """``step()``: one stage-II step of ``scripts/train_maskbit.py`` (tokens made by the frozen tokenizer)."""
  from modeling.modules import EMAModel, MLMLoss, get_mask_tokens, split_factorized_tokens

  torch = ref.torch
  mlm = cfg.model.mlm_model
  tok = ref.tokenizer(cfg).eval()
  gen = ref.generator(cfg).train()
  loss_module = MLMLoss(cfg.losses.mlm.label_smoothing, cfg.losses.mlm.sum_splits)
  opt = ref.adamw(gen.parameters(), cfg)
  ema = EMAModel(gen.parameters(), decay=0.999)
  clip = float(cfg.training.max_grad_norm)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(ref.device)
  lab = torch.from_numpy(labels).long().to(ref.device)
  codebook_size = 2**cfg.model.vq_model.token_size

  def run(_=None):
    with torch.no_grad(), ref.precision():
      tokens = tok.encode(x)[1]["min_encoding_indices"].reshape(x.shape[0], -1)
    tokens = split_factorized_tokens(tokens, codebook_size=codebook_size, splits=mlm.codebook_splits)
    masked, masks = get_mask_tokens(tokens, gen.mask_token, mode=mlm.train_mask_schedule_strategy)
    drop = torch.rand(lab.shape, device=ref.device) < mlm.class_label_dropout
    with ref.precision():
      logits = gen(masked, lab.clone(), drop)
      loss, _ = loss_module(logits, tokens, masks)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(gen.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.step(gen.parameters())
    ref.sync()

  return run


def median_step_s(run, repeats: int) -> float:
  """Median of ``repeats`` calls after two (first: allocation/warm-up), as benchmarks/train.py times ours."""
  return time_call(run, warmup=2, repeats=repeats)["median_s"]


# ---------------------------------------------------------------------------------------------- our side

def our_forward(gen_cfg, tokens: np.ndarray, labels: np.ndarray, dtype: str):
  import jax
  import jax.numpy as jnp

  import maskbit_jax

  gen = maskbit_jax.load_generator(gen_cfg, random_init=True, dtype=dtype)
  fwd = jax.jit(lambda p, t, l, d: gen.module.apply({"params": p}, t, l, d))
  t, lab = jnp.asarray(tokens, jnp.int32), jnp.asarray(labels, jnp.int32)
  drop = jnp.zeros(len(labels), bool)
  return lambda _=None: jax.block_until_ready(fwd(gen.params, t, lab, drop))


# ---------------------------------------------------------------------------------------------- rows

def row(name: str, unit: str, batch: int, ours_s: float, ref_s: float, timing: str, **extra) -> dict:
  return dict(row=name, unit=unit, batch=batch, ours_s=ours_s, reference_s=ref_s,
              ours_per_s=batch / ours_s, reference_per_s=batch / ref_s, ratio_ours_over_reference=ref_s / ours_s,
              timing=timing, **extra)


def run_rows(args, ref: Reference) -> list[dict]:
  import maskbit_jax
  from benchmarks.train import bench_stage

  tok_cfg, gen_cfg, _ = our_configs(args.reduced)
  size = int(tok_cfg.dataset.preprocessing.resolution)
  rng = np.random.default_rng(0)
  batch = {k: v[1 if args.reduced else 0] for k, v in BATCHES.items()}
  batch.update({k: v for k, v in (args.batch or {}).items()})
  inference = f"min of {args.repeats} interleaved runs after a warm-up"
  rows = []

  def report(r):
    rows.append(r)
    print(f"{r['row']:16s} batch {r['batch']:3d}  ours {r['ours_per_s']:10.3f} {r['unit']}  "
          f"reference {r['reference_per_s']:10.3f} {r['unit']}  ratio {r['ratio_ours_over_reference']:5.2f}x", flush=True)

  if "encode" in args.rows or "decode" in args.rows:
    n = max(batch["encode"], batch["decode"])
    images = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    ref_enc, ref_dec = reference_codec(ref, tok_cfg, images)
    import jax

    tok = maskbit_jax.load_tokenizer(tok_cfg, random_init=True, dtype=args.dtype)
    x = jax.device_put(images)
    tokens = tok.encode(x, validate=False)
    runners = dict(ours_encode=lambda _: tok.encode(x, validate=False).block_until_ready(),
                   ours_decode=lambda _: tok.decode_tokens(tokens).block_until_ready(),
                   ref_encode=ref_enc, ref_decode=ref_dec)
    wanted = {k: v for k, v in runners.items() if k.split("_")[1] in args.rows}
    best = time_interleaved(wanted, [1], args.repeats)
    for what in ("encode", "decode"):
      if what in args.rows:
        report(row(what, "img/s", n, best[f"ours_{what}", 1], best[f"ref_{what}", 1], inference))

  if "forward" in args.rows:
    mlm = gen_cfg.model.mlm_model
    bits = int(gen_cfg.model.vq_model.token_size) // int(mlm.codebook_splits)
    seq = (size // 2 ** (int(gen_cfg.model.vq_model.num_resolutions) - 1)) ** 2
    b = batch["forward"]
    tokens = rng.integers(0, 2**bits + 1, (b, seq, int(mlm.codebook_splits))).astype(np.int64)  # 2**bits: mask
    labels = rng.integers(0, int(gen_cfg.model.nclass), b)
    best = time_interleaved(dict(ours=our_forward(gen_cfg, tokens, labels, args.dtype),
                                 ref=reference_forward(ref, gen_cfg, tokens, labels)), [1], args.repeats)
    report(row("forward", "img/s", b, best["ours", 1], best["ref", 1], inference, tokens=seq,
               hidden_dim=int(mlm.hidden_dim), depth=int(mlm.depth)))

  if "sampling" in args.rows:
    settings = {k: v for k, v in maskbit_jax.generator.sampling_defaults(gen_cfg).items() if k != "num_steps"}
    settings.setdefault("mask_schedule_strategy", "arccos")  # the reference's sample() needs it named
    b = batch["sampling"]
    steps = [args.num_steps] if args.measure_steps is None else [1, args.measure_steps]
    best = time_interleaved(dict(ours=jax_runner(gen_cfg, b, args.dtype),
                                 ref=reference_sampler(ref, gen_cfg, b, settings)), steps, args.repeats)
    ours = seconds_for(best, "ours", args.num_steps, args.measure_steps)
    theirs = seconds_for(best, "ref", args.num_steps, args.measure_steps)
    report(row("sampling", "img/s", b, ours, theirs, inference, num_steps=args.num_steps,
               extrapolated_from=args.measure_steps, settings=settings))

  with tempfile.TemporaryDirectory() as tmp:
    if "train_tokenizer" in args.rows:
      b = batch["train_tokenizer"]
      ours = bench_stage("tokenizer", batch_per_device=b, dtype=args.dtype, reduced=args.reduced,
                         repeats=args.repeats, workdir=os.path.join(tmp, "tokenizer"))
      images = rng.uniform(0, 1, (b, size, size, 3)).astype(np.float32)
      theirs = median_step_s(reference_tokenizer_step(ref, tok_cfg, images), args.repeats)
      report(row("train_tokenizer", "img/s", b, ours["step_s"], theirs,
                 f"median of {args.repeats} steps after compile + warm-up", step="generator + discriminator"))
    if "train_generator" in args.rows:
      b = batch["train_generator"]
      ours = bench_stage("generator", batch_per_device=b, dtype=args.dtype, reduced=args.reduced,
                         repeats=args.repeats, workdir=os.path.join(tmp, "generator"))
      images = rng.uniform(0, 1, (b, size, size, 3)).astype(np.float32)
      labels = rng.integers(0, int(gen_cfg.model.nclass), b)
      theirs = median_step_s(reference_generator_step(ref, gen_cfg, images, labels), args.repeats)
      report(row("train_generator", "img/s", b, ours["step_s"], theirs,
                 f"median of {args.repeats} steps after compile + warm-up", params=ours.get("params")))
  return rows


def _reference_commit(path: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
  except OSError:
    return None
  return out.stdout.strip() or None


def _parse_batches(text: str | None) -> dict:
  out = {}
  for item in (text or "").split(","):
    if not item.strip():
      continue
    key, _, value = item.partition("=")
    if key not in ROWS or not value.isdigit():
      raise SystemExit(f"--batch takes ROW=N items with ROW in {ROWS}, got {item!r}")
    out[key] = int(value)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reference", required=True, help="checkout of markweberdev/maskbit (modeling/, configs/)")
  p.add_argument("--reduced", action="store_true", help="reduced widths and 128 px (benchmarks/train.py REDUCED)")
  p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {ROWS}")
  p.add_argument("--batch", help="per-row batch overrides, e.g. sampling=8,forward=16")
  p.add_argument("--num_steps", type=int, default=64)
  p.add_argument("--measure-steps", type=int, default=None,
                 help="sampling: time 1 and this many steps and extrapolate to --num_steps (slow CPUs)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
  p.add_argument("--torch-device", default=None, help="default: cuda when torch sees a GPU, else cpu")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="both sides' compute: ours bf16 with float32 parameters, the reference under bf16 autocast")
  p.add_argument("--reference-commit", default=None,
                 help="the reference's commit, recorded (default: asked of git; give it for an exported checkout)")
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args(argv)
  args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
  unknown = [r for r in args.rows if r not in ROWS]
  if unknown:
    p.error(f"unknown rows {unknown}; choose from {ROWS}")
  if args.measure_steps is not None and args.measure_steps < 2:
    p.error("--measure-steps must be >= 2")
  args.batch = _parse_batches(args.batch)
  os.chdir(REPO)  # benchmarks/train.py names its configs relative to the repository

  import torch

  device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
  ref = Reference(args.reference, device, args.threads, args.dtype)
  _, _, overrides = our_configs(args.reduced)
  start = time.perf_counter()
  rows = run_rows(args, ref)
  record = dict(benchmark="compare_reference", reduced=args.reduced, overrides=overrides if args.reduced else {},
                rows=rows, machine=machine(), torch=torch.__version__, torch_device=device, torch_threads=args.threads,
                reference=dict(path=os.path.abspath(args.reference),
                               commit=args.reference_commit or _reference_commit(args.reference)),
                dtype=args.dtype, seconds=round(time.perf_counter() - start, 1))
  if not args.no_save:
    print("appended to", append_result("compare_reference", record))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
