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
