"""The sampling benchmarks run end to end on the tiny configs (so they cannot rot between GPU sessions)."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO


def _run(module, argv, monkeypatch):
  monkeypatch.setattr(sys, "argv", [module.__file__] + argv)
  module.main()


def test_bar_sampling_benchmark_on_the_tiny_config(monkeypatch, capsys):
  from benchmarks import bar_sampling

  _run(bar_sampling, ["--models", "bar_tiny", "--batches", "2", "--repeats", "1", "--no-save"], monkeypatch)
  out = capsys.readouterr().out
  assert "bar_tiny" in out and "img/s" in out
  with pytest.raises(SystemExit, match="no config"):
    _run(bar_sampling, ["--models", "bar_nonexistent", "--no-save"], monkeypatch)


def test_maskbit_sampling_benchmark_on_the_tiny_config(monkeypatch, capsys):
  from benchmarks import sampling

  _run(sampling, ["--config", str(REPO / "configs/generator_tiny.py"), "--batches", "2", "--num_steps", "4",
                  "--measure-steps", "2", "--repeats", "1", "--no-save"], monkeypatch)
  assert "img/s" in capsys.readouterr().out


@pytest.mark.slow
def test_edit_benchmark_on_the_tiny_config(monkeypatch, capsys):
  from benchmarks import edit

  _run(edit, ["--config", str(REPO / "configs/generator_tiny.py"), "--batches", "2", "--num_steps", "2",
              "--repeats", "1", "--no-save"], monkeypatch)
  out = capsys.readouterr().out
  assert all(f" {name} " in out for name in ("sample", "edit", "vary")) and "img/s" in out


def _write_jsonl(path, records):
  import json

  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_targets_report_takes_the_worst_newest_setting_and_never_calls_a_missing_figure_met(tmp_path, capsys):
  from benchmarks import targets

  h100 = dict(device="NVIDIA H100 80GB HBM3", commit="abc1234")
  sampling = dict(config="maskbit_generator_12bit.py", num_steps=64, machine=h100)
  _write_jsonl(tmp_path / "sampling.jsonl", [
      dict(sampling, time="t0", batch=32, jax={"bfloat16": {"images_per_s": 5.0}}),   # superseded below
      dict(sampling, time="t1", batch=32, jax={"bfloat16": {"images_per_s": 25.0}},
           ratio_ours_over_reference_bfloat16=2.0),
      dict(sampling, time="t2", batch=1, jax={"bfloat16": {"images_per_s": 3.0}},
           ratio_ours_over_reference_bfloat16=1.2),                                     # the worst batch decides
      dict(sampling, time="t3", batch=32, num_steps=16, jax={"bfloat16": {"images_per_s": 99.0}}),  # not 64 steps
  ])
  rows = {r["target"]: r for r in targets.evaluate(str(tmp_path), "H100")}
  speed = rows["MaskBit sampling, 64 guided steps + decode, bf16, batch 32"]
  assert (speed["status"], speed["value"], speed["time"]) == ("met", 25.0, "t1")
  ratio = rows["MaskBit sampling vs reference, bf16"]
  assert (ratio["status"], ratio["value"], ratio["settings"]) == ("missed", 1.2, 2)
  assert rows["BAR-B sampling, bf16, batch 125"]["status"] == "unmeasured"
  assert not any("CPU" in name for name in rows)  # CPU-only targets do not apply to an H100
  assert targets.main(["--results", str(tmp_path), "--device", "H100", "--strict"]) == 1
  assert "| missed |" in capsys.readouterr().out

  (tmp_path / "bar_sampling.jsonl").write_text('{"config": "bar_b"}\nnot json\n')
  with pytest.raises(SystemExit, match=r"bar_sampling.jsonl:2: not a JSON record"):
    targets.evaluate(str(tmp_path))


def test_reference_precision_contexts():
  torch = pytest.importorskip("torch")
  from benchmarks.common import torch_precision

  with torch_precision("cpu", "float32"):
    assert not torch.is_autocast_enabled("cpu")
  with torch_precision("cpu", "bfloat16"):
    assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
  with pytest.raises(ValueError, match="float16"):
    torch_precision("cpu", "float16")


@pytest.mark.parametrize("argv, message", [(["--bogus"], "unknown argument --bogus"),
                                           (["--maskbit-ref", "/nonexistent/maskbit"], "no modeling/ folder")])
def test_accelerator_script_refuses_bad_arguments_before_running_anything(argv, message):
  import proc_wait

  proc = proc_wait.run(["bash", str(REPO / "benchmarks/accelerator.sh"), *argv])
  assert proc.returncode == 2 and message in proc.stderr
  assert "== parity" not in proc.stdout
