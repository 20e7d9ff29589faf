"""One training step of each stage: images/s per device and memory per device.

  python -m benchmarks.train                       # full-size models on the device present
  python -m benchmarks.train --reduced             # CPU: reduced width/size, stated in the record
  python -m benchmarks.train --dtype bfloat16 --batch 64 --stage generator
  python -m benchmarks.train --reduced --stage bar_fsq   # BAR-FSQ tokenizer, its own terms (no frozen nets)
  python -m benchmarks.train --reduced --stage bar_fsq --accumulation 2   # 2 micro-batches per step

Each record names the config, every override, the mesh, the batch, the dtype,
the step time (median of ``--repeats`` after a compile + warm-up step), images/s
per device, the compiled program's memory per device (XLA memory analysis:
arguments + outputs + temporaries, minus donated aliases) and, on a GPU, the
allocator's peak, and the host's load average as it ended (a shared CPU's figures depend on
it). For the generator an MFU estimate (6 x params x tokens
FLOPs per image, attention excluded, against the chip's dense bf16 peak) is
added when the peak is known. Results go to benchmarks/results/train.jsonl.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import append_result, machine, peak_memory_bytes

# Dense bf16 peak FLOP/s of accelerators we may run on (vendor figures, no sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5p": 459e12, "TPU v6e": 918e12,
                   "TPU v5 lite": 197e12, "TPU v4": 275e12}

REDUCED = {
    "tokenizer": ["--config.model.vq_model.hidden_channels=32", "--config.model.discriminator.hidden_channels=32",
                  "--config.dataset.preprocessing.resolution=128"],
    "generator": ["--config.model.mlm_model.hidden_dim=256", "--config.model.mlm_model.depth=4",
                  "--config.model.mlm_model.heads=4", "--config.model.mlm_model.mlp_dim=1024",
                  "--config.dataset.preprocessing.resolution=128"],
}
# BAR-FSQ (stage bar_fsq): the frozen networks of its perceptual, Gram and GAN terms are downloads, so the
# benchmark step is the tokenizer's own (reconstruction + CLIP alignment) with those weights at 0.
BAR_FSQ_OWN_TERMS = ["--config.losses.perceptual_weight=0.0", "--config.losses.gram_loss_weight=0.0",
                     "--config.losses.discriminator_weight=0.0", "--config.experiment.siglip2_checkpoint=random"]
REDUCED["bar_fsq"] = ["--config.model.siglip2.hidden_size=128", "--config.model.siglip2.intermediate_size=512",
                      "--config.model.siglip2.num_hidden_layers=4", "--config.model.siglip2.num_attention_heads=4",
                      "--config.model.vit_decoder.width=128", "--config.model.vit_decoder.num_layers=4",
                      "--config.model.vit_decoder.num_heads=4", "--config.dataset.preprocessing.crop_size=128",
                      "--config.dataset.preprocessing.resize_shorter_edge=128"]
CONFIGS = {"tokenizer": "configs/maskbit_tokenizer_12bit.py", "generator": "configs/maskbit_generator_12bit.py",
           "bar_fsq": "configs/bar_fsq_16bits.py"}


def _peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def _compiled_memory(lowered) -> dict:
  try:
    mem = lowered.compile().memory_analysis()
  except Exception:  # not every backend reports it
    return {}
  if mem is None:
    return {}
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  return dict(compiled_bytes_per_device=int(total), temp_bytes=int(mem.temp_size_in_bytes),
              argument_bytes=int(mem.argument_size_in_bytes))


def bench_stage(stage: str, *, batch_per_device: int, dtype: str, reduced: bool, repeats: int, workdir: str,
                accumulation: int = 1) -> dict:
  import maskbit_jax
  from maskbit_jax.train.loop import make_mesh
  from maskbit_jax.train.tasks import make_task

  overrides = list(REDUCED[stage] if reduced else []) + [
      f"--config.training.per_gpu_batch_size={batch_per_device}", f"--config.runtime.dtype={dtype}",
      f"--config.training.gradient_accumulation_steps={accumulation}",
      # the step of the phase with the discriminator (the expensive one) from step 0
      *(["--config.losses.perceptual_weight=0.0", "--config.losses.discriminator_start=0"] if stage == "tokenizer"
        else []), *(BAR_FSQ_OWN_TERMS if stage == "bar_fsq" else [])]
  if stage == "generator":
    tok_cfg = maskbit_jax.load_config(CONFIGS["tokenizer"], REDUCED["tokenizer"] if reduced else [])
    tok = maskbit_jax.load_tokenizer(tok_cfg, random_init=True)
    path = os.path.join(workdir, "tokenizer")
    maskbit_jax.checkpointing.save_params(path, tok.params, kind="tokenizer", config=tok.config.to_dict(),
                                          overwrite=True)
    overrides.append(f"--config.experiment.vqgan_checkpoint={path}")
    overrides += [o for o in REDUCED["tokenizer"] if "vq_model" in o] if reduced else []
  cfg = maskbit_jax.load_config(CONFIGS[stage], overrides)
  mesh = make_mesh(cfg)
  task = make_task(cfg, mesh, workdir)
  size = int(task.size)
  rng = np.random.default_rng(0)
  local = {"image": rng.uniform(0, 1, (task.local_batch, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, 1000, task.local_batch).astype(np.int32)}
  with jax.set_mesh(mesh):
    state = task.init_state()
    batch = task.to_device(local)
    if stage == "tokenizer":
      memory = _compiled_memory(task.step_fn.lower(state, batch, task.perceptual_vars, 0))
    elif stage == "bar_fsq":
      memory = _compiled_memory(task.step_fn.lower(state, batch, task.frozen, 0))
    else:
      memory = _compiled_memory(task.step_fn.lower(state, batch, task.tokenizer.params))
    start = time.perf_counter()
    state, metrics = task.step(state, batch, 0)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats + 1):
      start = time.perf_counter()
      state, metrics = task.step(state, batch, i + 1)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  step_s = float(np.median(times[1:]))
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  n_dev = mesh.devices.size
  record = dict(stage=stage, config=CONFIGS[stage], overrides=overrides, reduced=reduced, dtype=dtype,
                mesh=dict(mesh.shape), global_batch=task.global_batch, batch_per_device=batch_per_device,
                resolution=size, accumulation=accumulation, load_average_1_5_15=[round(x, 2) for x in load],
                step_s=step_s, compile_and_first_step_s=compile_s,
                images_per_s_per_device=task.global_batch / step_s / n_dev, **memory, **peak_memory_bytes())
  if stage == "generator":
    params = sum(x.size for x in jax.tree.leaves(state.params))
    tokens = task.module.seq_len + 1
    flops_per_image = 6.0 * params * tokens
    record.update(params=int(params), model_flops_per_image=flops_per_image)
    peak = _peak_flops(jax.devices()[0])
    if peak:
      record["mfu_estimate"] = record["images_per_s_per_device"] * flops_per_image / peak
  return record


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--stage", choices=["tokenizer", "generator", "bar_fsq", "both"], default="both")
  p.add_argument("--batch", type=int, default=None, help="batch per device (default 16 tokenizer, 64 generator; "
                                                           "2 and 8 with --reduced)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--reduced", action="store_true", help="reduced width/resolution (for CPUs)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--accumulation", type=int, default=1,
                 help="training.gradient_accumulation_steps: micro-batches of --batch per optimizer step")
  args = p.parse_args(argv)
  stages = ["tokenizer", "generator"] if args.stage == "both" else [args.stage]
  with tempfile.TemporaryDirectory() as tmp:
    for stage in stages:
      default = {"tokenizer": 2 if args.reduced else 16, "generator": 8 if args.reduced else 64,
                 "bar_fsq": 2 if args.reduced else 32}[stage]
      record = bench_stage(stage, batch_per_device=args.batch or default, dtype=args.dtype, reduced=args.reduced,
                           repeats=args.repeats, workdir=os.path.join(tmp, stage), accumulation=args.accumulation)
      record.update(machine())
      path = append_result("train", record)
      print({k: record[k] for k in ("stage", "step_s", "images_per_s_per_device") if k in record},
            record.get("compiled_bytes_per_device"), record.get("mfu_estimate"), "->", path)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
