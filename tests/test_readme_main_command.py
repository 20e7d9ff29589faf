"""The README's main command (its first ```bash block), run as written minus the install.

The default suite shortens both runs through the override the README documents for a quicker look
(``--config.training.max_train_steps=N``) and checks what the command prints and writes; the ``slow``
test runs it whole and checks the two figures the README promises (held-out PSNR of the tokenizer,
class accuracy of the generator's samples).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

import proc_wait
from benchmarks.first_run import main_commands
from conftest import REPO, drop_simulated_devices

QUICK_STEPS = 24


def quick_override() -> str:
  """The README must document the override the quick variant uses."""
  override = "--config.training.max_train_steps="
  assert override in (REPO / "README.md").read_text(), "the README does not document the step-count override"
  return override


def run_main_command(tmp_path, extra: list[str]) -> list[str]:
  (tmp_path / "configs").symlink_to(REPO / "configs")
  env = drop_simulated_devices(dict(__import__("os").environ))
  env["PYTHONPATH"] = str(REPO)
  outputs = []
  for argv in main_commands():
    try:
      proc = proc_wait.run([sys.executable] + argv[1:] + extra, cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired:
      pytest.fail(f"{shlex.join(argv)} made no progress for {proc_wait.STALL_S:.0f} s")
    assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    outputs.append(proc.stdout)
  return outputs


def check_outputs(tmp_path, outputs: list[str], steps_tok: int, steps_gen: int) -> tuple[dict, dict]:
  tok, gen = (json.loads((tmp_path / "runs" / name / "summary.json").read_text()) for name in ("tok", "gen"))
  assert (tmp_path / "runs/tok/export/tokenizer").is_dir() and (tmp_path / "runs/gen/export/generator").is_dir()
  assert (tmp_path / f"runs/tok/images/recon_{steps_tok:08d}.png").is_file()
  assert (tmp_path / f"runs/gen/images/samples_{steps_gen:08d}.png").is_file()
  assert tok["end_step"] == steps_tok and gen["end_step"] == steps_gen
  assert "eval_psnr" in tok["eval"]
  assert {"eval_class_accuracy", "eval_tokenizer_psnr"} <= set(gen["eval"])
  # stage I says when the discriminator trains (and, with an entropy term, why its losses go negative); both
  # runs say when they compile
  from maskbit_jax.config import load_config

  entropy = load_config(str(REPO / "configs" / "tokenizer_tiny.py")).model.vq_model.entropy_loss_weight
  note = [line for line in outputs[0].splitlines() if "] note: " in line]
  assert note and "discriminator" in note[0], outputs[0][-2000:]
  assert ("can be negative" in note[0]) == (entropy > 0), note[0]
  for out in outputs:
    assert "compiling the train step" in out and "compiled and ran step 1 in " in out
  # both figures printed, at the end of the run
  last_eval = [line for line in outputs[1].splitlines() if " eval at step " in line][-1]
  assert "eval_class_accuracy" in last_eval and "eval_tokenizer_psnr" in last_eval
  return tok["eval"], gen["eval"]


def test_readme_main_command_quick(tmp_path):
  override = quick_override()
  outputs = run_main_command(tmp_path, [f"{override}{QUICK_STEPS}"])
  _, gen = check_outputs(tmp_path, outputs, QUICK_STEPS, QUICK_STEPS)
  assert 0.0 <= gen["eval_class_accuracy"] <= 1.0 and gen["eval_tokenizer_psnr"] > 5.0


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
  """The README's main command as written (minus the install): (tokenizer figures, generator figures)."""
  from maskbit_jax.config import load_config

  tmp_path = tmp_path_factory.mktemp("main_command")
  outputs = run_main_command(tmp_path, [])
  steps = [int(load_config(str(REPO / "configs" / f"{n}_tiny.py")).training.max_train_steps)
           for n in ("tokenizer", "generator")]
  return check_outputs(tmp_path, outputs, *steps)


@pytest.mark.slow
def test_readme_main_command_whole_psnr(whole_run):
  """Issue 17's reconstruction target: held-out PSNR >= 24 dB (measured 25.0 dB)."""
  tok, gen = whole_run
  assert tok["eval_psnr"] >= 24.0 and gen["eval_tokenizer_psnr"] >= 24.0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="issue 17's class-accuracy target is not reached: the tiny generator gives 37.5 % "
                          "(44-45 % with twice the steps or a wider, deeper model)")
def test_readme_main_command_whole_class_accuracy(whole_run):
  _, gen = whole_run
  assert gen["eval_class_accuracy"] >= 0.9
