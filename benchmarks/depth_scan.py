"""Compile time and step time of the deep stacks: MaskBit sampling, BAR sampling, one stage-II train step.

  python -m benchmarks.depth_scan --label loop      # on a commit with the Python loop over blocks
  python -m benchmarks.depth_scan --label scan      # on one with the blocks under nn.scan

Full-size models (12-bit MaskBit generator, BAR-B, the 12-bit generator's
stage-II step with its frozen tokenizer), random weights. Compile time is what
JAX reports through ``jax.monitoring`` for tracing, lowering and XLA
compilation during the first call (summed over every program it compiles);
the call times are the minimum over ``--repeats`` calls after it, in wall and in
process CPU seconds (``compile_cpu_s``: the first call's CPU minus a later call's,
the figure that a shared machine's load moves least). Sampling runs
``--maskbit-steps`` MaskGIT steps (the steps are one ``lax.scan``, so compile
time does not depend on their number) and BAR-B's full AR loop at batch 1.
The record holds the 1-minute load average before and after, since the
machine may be shared. Results go to benchmarks/results/depth_scan.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import append_result, machine  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compile_seconds():
  """Yields a dict whose ``"s"`` sums the trace + lower + XLA compile durations reported inside the block."""
  import jax

  total = {"s": 0.0}

  def listen(event, duration, **_):
    if event in COMPILE_EVENTS:
      total["s"] += duration

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield total
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def measure(run, repeats: int) -> dict:
  """First call (compile + run), then the minimum of ``repeats`` calls; wall and process CPU seconds.

  On a shared machine wall times follow the load; CPU seconds (all threads of this process) much
  less, so ``compile_cpu_s`` = CPU of the first call minus CPU of a later one is the figure to compare.
  """
  start, cpu = time.perf_counter(), time.process_time()
  with compile_seconds() as compiled:
    run()
  first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
  times, cpus = [], []
  for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    run()
    times.append(time.perf_counter() - start)
    cpus.append(time.process_time() - cpu)
  out = dict(compile_s=compiled["s"], first_call_s=first, first_call_cpu_s=first_cpu, repeats=repeats)
  if repeats:
    out.update(call_s=min(times), call_cpu_s=min(cpus), compile_cpu_s=first_cpu - min(cpus))
  return out


def maskbit_sampling(num_steps: int):
  import jax

  import maskbit_jax

  config = os.path.join(REPO, "configs/maskbit_generator_12bit.py")
  tok = maskbit_jax.load_tokenizer(config, random_init=True)
  gen = maskbit_jax.load_generator(config, random_init=True)

  def run():
    out = maskbit_jax.sample(gen, tok, np.zeros(1, np.int32), jax.random.key(0), num_steps=num_steps)
    jax.block_until_ready(out["images"])

  return run, dict(config="maskbit_generator_12bit", batch=1, num_steps=num_steps)


def bar_sampling():
  import jax

  import maskbit_jax
  from maskbit_jax import bar

  config = os.path.join(REPO, "configs/bar_b.py")
  gen = maskbit_jax.load_bar_generator(config, random_init=True)
  tok = maskbit_jax.load_bar_tokenizer(config, random_init=True)

  def run():
    out = bar.sample(gen, tok, np.zeros(1, np.int32), jax.random.key(0))
    jax.block_until_ready(out["images"])

  return run, dict(config="bar_b", batch=1, num_steps=gen.module.num_steps)


def train_step(batch: int, workdir: str):
  import jax

  import maskbit_jax
  from maskbit_jax.train.loop import make_mesh
  from maskbit_jax.train.tasks import make_task

  tok = maskbit_jax.load_tokenizer(os.path.join(REPO, "configs/maskbit_tokenizer_12bit.py"), random_init=True)
  path = os.path.join(workdir, "tokenizer")
  maskbit_jax.checkpointing.save_params(path, tok.params, kind="tokenizer", config=tok.config.to_dict(),
                                        overwrite=True)
  cfg = maskbit_jax.load_config(os.path.join(REPO, "configs/maskbit_generator_12bit.py"),
                                [f"--config.training.per_gpu_batch_size={batch}",
                                 f"--config.experiment.vqgan_checkpoint={path}"])
  mesh = make_mesh(cfg)
  task = make_task(cfg, mesh, workdir)
  size = int(cfg.dataset.preprocessing.resolution)
  rng = np.random.default_rng(0)
  local = {"image": rng.uniform(0, 1, (task.local_batch, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, 1000, task.local_batch).astype(np.int32)}
  holder = {}
  with jax.set_mesh(mesh):
    holder["state"] = task.init_state()
    data = task.to_device(local)

  def run():
    with jax.set_mesh(mesh):
      holder["state"], metrics = task.step(holder["state"], data, 0)
      jax.block_until_ready(metrics)

  return run, dict(config="maskbit_generator_12bit", global_batch=task.global_batch, resolution=size)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--label", required=True, help="what is measured, e.g. loop or scan")
  p.add_argument("--cases", default="maskbit_sampling,bar_sampling,train_step")
  p.add_argument("--maskbit-steps", type=int, default=2)
  p.add_argument("--train-batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    for case in args.cases.split(","):
      if case == "maskbit_sampling":
        run, info = maskbit_sampling(args.maskbit_steps)
      elif case == "bar_sampling":
        run, info = bar_sampling()
      elif case == "train_step":
        run, info = train_step(args.train_batch, tmp)
      else:
        raise SystemExit(f"unknown case {case!r}")
      load_before = os.getloadavg()[0]
      result = measure(run, args.repeats)
      record = dict(benchmark="depth_scan", case=case, label=args.label, **info, **result,
                    load_avg_1min=[load_before, os.getloadavg()[0]], machine=machine())
      print({k: record.get(k) for k in ("case", "label", "compile_s", "compile_cpu_s", "first_call_s", "call_s",
                                        "call_cpu_s", "load_avg_1min")}, flush=True)
      if not args.no_save:
        append_result("depth_scan", record)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
