"""Full-size BAR sampling with guidance, decode included: images/s and peak memory.

  python benchmarks/bar_sampling.py                               # B/4, B/2, B at batches 1,125 (accelerators)
  python benchmarks/bar_sampling.py --models bar_b_patch4 --batches 1,4 --reference /path/to/BAR

Each model samples with its released evaluation settings (guidance, temperature, bit
allocation: the config's defaults), raster order with the KV cache, and decodes with
the binary-FSQ tokenizer's ViT decoder; weights are random (speed does not depend on
them). One call = class prefix + every AR step + decode, timed after a compile/warm-up
call. With ``--reference`` (a checkout of github.com/amazon-far/BAR, e.g. the public fork
noctrog/BAR at the release commit; ``modeling/`` and ``configs/`` suffice, torch and
einops and omegaconf installed) the reference's ``BAR.generate(..., kv_cache=True)`` and
``BAR_FSQ.decode_tokens`` run on the same machine, batch and settings, their runs
interleaved with ours; each figure is the minimum over ``--repeats``. timm and
transformers are replaced by stand-ins where missing (the decoder's ``Mlp`` is
Linear-GELU-Linear either way; the SigLIP2 encoder is not built). The paper's protocol
(``specs/bar.md``) is batch 125; on a CPU the default batches are 1 and 4.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (append_result, machine, peak_memory_bytes, reference_dtypes, torch_device,  # noqa: E402
                               torch_precision, torch_sync)
from benchmarks.sampling import record_reference, time_interleaved  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("bar_b_patch4", "bar_b_patch2", "bar_b")


def jax_runner(config: str, batch: int, dtype: str):
  """``run(_)``: one full sampling call (blocking) of maskbit_jax at ``batch``; and the settings it uses."""
  import jax

  import maskbit_jax
  from maskbit_jax import bar

  gen = maskbit_jax.load_bar_generator(config, random_init=True, dtype=dtype)
  tok = maskbit_jax.load_bar_tokenizer(config, random_init=True, dtype=dtype)
  labels = np.arange(batch) % gen.num_classes

  def run(_=None):
    out = bar.sample(gen, tok, labels, jax.random.key(0))
    jax.block_until_ready(out["images"])

  return run, bar.resolve_settings(gen, {})


def _stub_missing_reference_imports() -> None:
  """Stand-ins for timm (the decoder's ``Mlp``) and transformers (the encoder only) where not installed."""
  import torch.nn as nn

  try:
    import timm.layers  # noqa: F401
  except Exception:
    class Mlp(nn.Module):  # timm's Mlp without dropout / norm: fc1 -> act -> fc2
      def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0,
                   **_):
        super().__init__()
        hidden_features, out_features = hidden_features or in_features, out_features or in_features
        self.fc1, self.act, self.fc2 = nn.Linear(in_features, hidden_features), act_layer(), nn.Linear(
            hidden_features, out_features)

      def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    timm, layers = types.ModuleType("timm"), types.ModuleType("timm.layers")
    layers.Mlp, timm.layers = Mlp, layers
    sys.modules.update({"timm": timm, "timm.layers": layers})
  try:
    import transformers  # noqa: F401
  except Exception:
    from unittest import mock

    sys.modules["transformers"] = mock.MagicMock(name="transformers")
  from benchmarks.tokenizer import _stub_torchvision_if_missing

  _stub_torchvision_if_missing()


def reference_runners(reference_dir: str, name: str, batch: int, settings: dict, threads: int | None, device: str,
                      dtypes):
  """``{dtype: run(_)}`` for the reference ``generate`` + ``decode_tokens`` of ``configs/generator/<name>.yaml``."""
  import torch
  from omegaconf import OmegaConf

  sys.path.insert(0, reference_dir)
  _stub_missing_reference_imports()
  from modeling.generator import BAR
  from modeling.modules.blocks import SigLIP2Decoder
  from modeling.quantizer import FSQ

  torch.set_num_threads(threads or os.cpu_count() or 1)
  torch.set_grad_enabled(False)
  cfg = OmegaConf.load(os.path.join(reference_dir, "configs/generator", f"{name}.yaml"))
  crop = 512 if "res512" in name else 256
  cfg.dataset.preprocessing = OmegaConf.create({"crop_size": crop, **(cfg.dataset.get("preprocessing") or {})})
  cfg.model.vq_model.setdefault("vit_dec_patch_size", 16)
  gen = BAR(cfg).eval().to(device)
  decoder = SigLIP2Decoder(cfg).eval().to(device)
  quantize = FSQ(in_channel=None, out_channel=decoder.width, token_size=cfg.model.vq_model.token_size,
                 config=cfg).to(device)
  labels = (torch.arange(batch) % cfg.model.generator.condition_num_classes).to(device)

  def runner(dtype):
    def run(_=None):
      with torch_precision(device, dtype):
        tokens = gen.generate(condition=labels.long(), guidance_scale=settings["guidance_scale"],
                              randomize_temperature=settings["randomize_temperature"], kv_cache=True,
                              tokens_allocation=list(settings["tokens_allocation"]))
        tokens = tokens.squeeze(1)  # BAR_FSQ.decode_tokens without the encoder it never uses
        z = quantize.get_codebook_entry(tokens.reshape(tokens.shape[0], -1)).reshape(
            tokens.shape[0], -1, decoder.width)
        decoder(z)
      torch_sync(device)

    return run

  return {d: runner(d) for d in dtypes}, torch.__version__


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(MODELS), help="config names under configs/")
  p.add_argument("--batches", default=None, help="default 1,125 (1,4 on CPU)")
  p.add_argument("--dtypes", default=None, help="default float32 on CPU, float32,bfloat16 elsewhere")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--reference", help="checkout of amazon-far/BAR (modeling/, configs/)")
  p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
  p.add_argument("--torch-device", default=None, help="the reference's device (default: cuda when torch sees a GPU)")
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args()

  import jax

  on_cpu = jax.default_backend() == "cpu"
  dtypes = args.dtypes.split(",") if args.dtypes else (["float32"] if on_cpu else ["float32", "bfloat16"])
  batches = [int(b) for b in (args.batches or ("1,4" if on_cpu else "1,125")).split(",")]
  for name in [m.strip() for m in args.models.split(",") if m.strip()]:
    config = os.path.join(REPO, "configs", f"{name}.py")
    if not os.path.isfile(config):
      raise SystemExit(f"no config {config}")
    for batch in batches:
      runners, settings = {}, None
      for d in dtypes:
        runners[f"jax_{d}"], settings = jax_runner(config, batch, d)
      record = dict(benchmark="bar_sampling", config=name, batch=batch, settings=settings,
                    timing="min over interleaved repeats after a warm-up call", repeats=args.repeats,
                    machine=machine(), jax={})
      if args.reference:
        device = torch_device(args.torch_device)
        ref_dtypes = reference_dtypes(dtypes, device)
        ref_runs, torch_version = reference_runners(args.reference, name, batch, settings, args.threads, device,
                                                    ref_dtypes)
        runners.update({f"reference_{d}": run for d, run in ref_runs.items()})
      best = time_interleaved(runners, [0], args.repeats)
      for d in dtypes:
        t = best[f"jax_{d}", 0]
        record["jax"][d] = dict(seconds=t, images_per_s=batch / t)
        print(f"{name:13s} batch {batch:3d} jax {d:9s} {batch / t:9.3f} img/s ({t:.2f} s)", flush=True)
      record["jax"].update(peak_memory_bytes())
      if args.reference:
        record_reference(record, {d: best[f"reference_{d}", 0] for d in ref_dtypes}, batch, torch_version, device,
                         args.threads or os.cpu_count(), label=f"{name:13s} ")
      if not args.no_save:
        append_result("bar_sampling", record)


if __name__ == "__main__":
  main()
