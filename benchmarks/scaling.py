"""Stage-II generator train step on 1, 2, 4, 8 simulated CPU devices, data-parallel and fsdp meshes.

  python benchmarks/scaling.py                                   # reduced width, 4 examples per device
  python benchmarks/scaling.py --devices 1,2,4,8 --per-device-batch 8 --hidden 512 --depth 8

Each device count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``)
and appends one record per mesh to ``benchmarks/results/scaling.jsonl``: compile time, median
step time, examples/s, and per-device memory (``compiled.memory_analysis()``: arguments + outputs
- donated + temporaries) with the model width used. The per-device batch is fixed (weak scaling). Attention is ``batched`` (what
``attention_impl="auto"`` picks on TPU/GPU) unless ``--attention`` says otherwise.

Simulated devices share this host's CPU cores, so at a fixed per-device batch the time per step
grows with the device count: these numbers show partitioning and collective overhead and the
per-device memory of each layout, not an accelerator speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def worker(args) -> list[dict]:
  import jax
  import numpy as np
  from flax import linen as nn

  import maskbit_jax
  from benchmarks.common import append_result, machine, peak_memory_bytes, time_call
  from maskbit_jax import sharding
  from maskbit_jax.generator import generator_fields
  from maskbit_jax.models.maskbit_transformer import (build_generator_module, init_generator_params,
                                                      resolve_attention_impl)
  from maskbit_jax.train.generator_step import MLMSettings, init_train_state, make_jitted_step
  from maskbit_jax.train.optim import make_optimizer

  n = jax.device_count()
  if n != args.worker_devices:
    raise RuntimeError(f"asked for {args.worker_devices} simulated devices, jax sees {n} (XLA_FLAGS not applied?)")
  cfg = maskbit_jax.load_config(os.path.join(REPO, "configs", f"{args.config}.py"))
  fields = dict(generator_fields(cfg), hidden_dim=args.hidden, depth=args.depth, heads=args.heads,
                mlp_dim=4 * args.hidden, dropout=0.0)
  module = build_generator_module(fields).clone(attention_impl=args.attention)
  tx = make_optimizer(cfg, kind="mlm")
  settings = MLMSettings.from_config(cfg)
  params = init_generator_params(module, jax.random.key(0))
  n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
  grid = int(module.seq_len ** 0.5)
  global_batch = args.per_device_batch * n
  rng = np.random.default_rng(0)
  batch_np = {"tokens": rng.integers(0, 2**module.token_size, (global_batch, grid, grid)).astype(np.int32),
              "label": rng.integers(0, module.nclass, (global_batch,)).astype(np.int32)}
  records = []
  for mode in args.modes.split(","):
    mesh = sharding.create_mesh({mode: n})
    step, state_sh, batch_sh = make_jitted_step(module, tx, settings, mesh)
    state = jax.device_put(init_train_state(module, tx, params, jax.random.key(1)), state_sh)
    batch = jax.device_put(batch_np, batch_sh)
    start = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    m = compiled.memory_analysis()
    holder = [state]

    def run():
      holder[0], metrics = compiled(holder[0], batch)
      jax.block_until_ready(metrics["mlm_loss"])

    timing = time_call(run, warmup=1, repeats=args.repeats)
    loss = float(compiled(holder[0], batch)[1]["mlm_loss"])
    record = dict(
        benchmark="generator_train_step_scaling", mode=mode, devices=n, mesh={mode: n},
        per_device_batch=args.per_device_batch, global_batch=global_batch,
        model=dict(config=args.config, reduced_width=True, hidden_dim=args.hidden, depth=args.depth,
                   heads=args.heads, mlp_dim=4 * args.hidden, seq_len=module.seq_len, token_bits=module.token_size,
                   codebook_splits=module.codebook_splits, params=n_params,
                   attention_impl=resolve_attention_impl(module.attention_impl),
                   dtype="float32"),
        compile_s=round(compile_s, 2), step=timing,
        examples_per_s=round(global_batch / timing["median_s"], 2),
        per_device_memory=dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
                               alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes),
                               peak_bytes=int(m.argument_size_in_bytes + m.output_size_in_bytes
                                              - m.alias_size_in_bytes + m.temp_size_in_bytes)),
        final_loss=loss, note="simulated CPU devices share the host's cores: overhead and memory layout, not speed-up",
        **peak_memory_bytes(), machine=machine())
    append_result("scaling", record)
    records.append(record)
    print(json.dumps({k: record[k] for k in ("mode", "devices", "compile_s", "examples_per_s")}
                     | {"median_s": timing["median_s"], "peak_gib": record["per_device_memory"]["peak_bytes"] / 2**30}),
          flush=True)
  return records


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", default="1,2,4,8", help="simulated device counts, one process each")
  p.add_argument("--modes", default="data,fsdp", help="mesh layouts: data (replicated state) and/or fsdp")
  p.add_argument("--config", default="maskbit_generator_12bit", help="released config the layout comes from")
  p.add_argument("--hidden", type=int, default=256, help="reduced width (released: 1024)")
  p.add_argument("--depth", type=int, default=4, help="reduced depth (released: 24)")
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--per-device-batch", type=int, default=4)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--attention", default="batched", choices=("batched", "per_example", "auto"),
                 help="attention implementation; batched (the accelerator path) shards cleanly, while the "
                      "per-example loop (auto on CPU) gathers the batch and grows with the device count")
  p.add_argument("--worker-devices", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker_devices is not None:
    worker(args)
    return 0
  counts = [int(x) for x in args.devices.split(",")]
  if any(c < 1 for c in counts):
    raise SystemExit(f"--devices {args.devices}: counts must be >= 1")
  forwarded = list(argv if argv is not None else sys.argv[1:])
  for n in counts:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={n}"]))
    print(f"-- {n} simulated device(s)", flush=True)
    run = subprocess.run([sys.executable, os.path.abspath(__file__), *forwarded, "--worker-devices", str(n)], env=env)
    if run.returncode:
      print(f"the {n}-device run failed with status {run.returncode}", file=sys.stderr)
      return run.returncode
  return 0


if __name__ == "__main__":
  sys.exit(main())
