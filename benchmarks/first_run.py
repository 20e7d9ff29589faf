"""Wall time of the README's main command on this machine, phase by phase (the install left out).

  python benchmarks/first_run.py                      # the command as the README writes it
  python benchmarks/first_run.py --steps 50 --no-save # a quicker look (--config.training.max_train_steps=50)

Runs each train command of the README's first bash block in a fresh temporary folder with this
interpreter and reads the phases off the lines the run prints, timed as they arrive: start-up (imports,
data, model: until the "compiling" line), compile (until "compiled and ran step 1"), train (until the
final evaluation line), evaluate + write (until the process ends). Also the figures the run reports
(held-out PSNR, class accuracy of the samples) and the size of this interpreter's environment.
Appends to benchmarks/results/first_run.jsonl with the machine named; the README's table comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.common import append_result, machine  # noqa: E402

INSTALL = ("python3 -m venv .venv", ".venv/bin/pip install -e .")
MARKS = (("compiling the train step", "start-up"), ("compiled and ran step", "compile"), (" eval at step ", "train"))


def main_commands() -> list[list[str]]:
  """The train commands of the README's first bash block after its install steps, as argv lists."""
  with open(os.path.join(REPO, "README.md")) as f:
    block = re.search(r"^```bash[ \t]*\n(.*?)^```", f.read(), flags=re.M | re.S).group(1)
  parts = [p.strip() for p in block.replace("\\\n", " ").strip().split("&&")]
  if tuple(parts[:len(INSTALL)]) != INSTALL:
    raise ValueError(f"the README's main command no longer starts with the install {INSTALL}: {parts[:2]}")
  commands = [shlex.split(p) for p in parts[len(INSTALL):]]
  if not all(c[:3] == [".venv/bin/python", "-m", "maskbit_jax.train"] for c in commands):
    raise ValueError(f"the README's main command is not a chain of train commands: {commands}")
  return commands


def timed_run(argv: list[str], cwd: str, env: dict) -> tuple[dict, list[str]]:
  """Runs ``argv``; returns seconds per phase (``MARKS``, then "evaluate + write") and the output lines."""
  start = time.perf_counter()
  proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  phases, lines, last, mark = {}, [], start, 0
  for line in proc.stdout:
    lines.append(line.rstrip("\n"))
    if mark < len(MARKS) and MARKS[mark][0] in line:
      now = time.perf_counter()
      phases[MARKS[mark][1]], last, mark = round(now - last, 2), now, mark + 1
  if proc.wait() != 0:
    raise SystemExit(f"{shlex.join(argv)} failed (exit {proc.returncode}):\n" + "\n".join(lines[-20:]))
  end = time.perf_counter()
  phases["evaluate + write"] = round(end - last, 2)
  phases["total"] = round(end - start, 2)
  return phases, lines


def environment_bytes() -> int | None:
  if sys.prefix == sys.base_prefix:
    return None  # not a virtual environment: its size would be the whole Python installation
  out = subprocess.run(["du", "-sb", sys.prefix], capture_output=True, text=True).stdout.split()
  return int(out[0]) if out else None


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=None, help="--config.training.max_train_steps for both runs")
  p.add_argument("--no-save", action="store_true")
  args = p.parse_args()
  extra = [] if args.steps is None else [f"--config.training.max_train_steps={args.steps}"]
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  stages, figures = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    os.symlink(os.path.join(REPO, "configs"), os.path.join(tmp, "configs"))
    for argv in main_commands():
      name = argv[argv.index("--workdir") + 1]
      stages[name], _ = timed_run([sys.executable] + argv[1:] + extra, tmp, env)
      with open(os.path.join(tmp, name, "summary.json")) as f:
        figures[name] = json.load(f).get("eval", {})
  total = round(sum(s["total"] for s in stages.values()), 1)
  for name, phases in stages.items():
    print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
  psnr = figures.get("runs/tok", {}).get("eval_psnr")
  accuracy = figures.get("runs/gen", {}).get("eval_class_accuracy")
  print(f"main command: {total} s; held-out PSNR {psnr} dB; class accuracy of the samples {accuracy}")
  record = dict(steps=args.steps, stages=stages, total_s=total, heldout_psnr_db=psnr, class_accuracy=accuracy,
                environment_bytes=environment_bytes(), machine=machine())
  if not args.no_save:
    print("appended to", append_result("first_run", record))


if __name__ == "__main__":
  main()
