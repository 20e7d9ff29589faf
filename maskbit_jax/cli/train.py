"""Train a tokenizer (stage I) or a MaskBit generator (stage II): ``python -m maskbit_jax.train``.

  python -m maskbit_jax.train --config configs/tokenizer_tiny.py --workdir runs/tok
  python -m maskbit_jax.train --config configs/generator_tiny.py --workdir runs/gen \\
      --config.experiment.vqgan_checkpoint=runs/tok/export/tokenizer
  python -m maskbit_jax.train --config configs/maskbit_tokenizer_12bit.py --workdir gs://bucket/tok12 \\
      --config.dataset.source=tfds:imagenet2012:train --config.losses.perceptual_checkpoint=resnet50.pth

The stage follows from the config (``model.mlm_model`` -> generator). A run in
an existing workdir resumes from its newest checkpoint; ``--config.x.y=v``
overrides any config value (unknown keys are errors). Multi-host runs take
``--coordinator_address/--num_processes/--process_id`` or find them in the
environment (TPU pod slices, SLURM, Open MPI).

Exit status: 0 when the steps asked for are done; 143 (``EXIT_PREEMPTED``) on
every process when a SIGTERM or SIGINT to any of them stopped the run early and
its checkpoint is saved (run again to resume); 2 for a workdir that belongs to
another run or is locked.
"""

from __future__ import annotations

import json
import sys

from maskbit_jax import cli_errors


def _parse(argv):
  from maskbit_jax.config import add_config_help, split_config_args

  config, overrides, rest = split_config_args(argv)
  p = cli_errors.parser("python -m maskbit_jax.train", __doc__)
  add_config_help(p)
  p.add_argument("--workdir", required=True, help="run folder: checkpoints, logs, images, exported weights")
  p.add_argument("--steps", type=int, default=None,
                 help="stop after this many steps in this invocation (the schedule still spans max_train_steps)")
  p.add_argument("--break_lock", action="store_true",
                 help="take over the workdir's lock (train.lock) from a run on another host that is known to be "
                      "gone; a dead run on this host is detected without it")
  try:
    from maskbit_jax import distributed
  except ImportError:  # pragma: no cover - the module ships with the package
    distributed = None
  if distributed is not None:
    distributed.add_distributed_args(p)
  args = p.parse_args(rest)
  if config is None:
    p.error("--config is required (a packaged config name such as tokenizer_tiny, a configs/*.py file or a "
            "reference .yaml)")
  return config, overrides, args, distributed


def main(argv=None) -> int:
  config, overrides, args, distributed = _parse(sys.argv[1:] if argv is None else argv)
  if distributed is not None:
    distributed.initialize_from_args(args)
  import logging

  from maskbit_jax.config import load_config
  from maskbit_jax.train import checkpoints
  from maskbit_jax.train.loop import RunMismatchError, WorkdirLockedError, train

  # Orbax reports every save step by step at INFO through absl; keep its warnings only, without the
  # traceback each of its threads attaches to a failed save (the error itself follows in one line).
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(checkpoints.TracebackFilter())
  checkpoints.filter_library_noise()
  cfg = load_config(config, overrides)
  try:
    summary = train(cfg, args.workdir, num_steps=args.steps, break_lock=args.break_lock)
  except (WorkdirLockedError, RunMismatchError, checkpoints.CheckpointError) as e:  # the workdir's state: one line
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  import jax

  if jax.process_index() == 0:
    print(json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}, default=str))
  if summary.get("stopped_by_signal"):  # saved, not finished: a scheduler should requeue the job
    from maskbit_jax.train.preemption import EXIT_PREEMPTED

    return EXIT_PREEMPTED
  return 0


if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
