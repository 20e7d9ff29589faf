"""Mutation fuzzing of the checkpoint reader (zip and legacy ``.bin``/``.pt``, ``.safetensors``, ``.npz``).

Every variant loads identically, raises a ValueError naming the file, or, only where the format
has no checksum over the mutated bytes, loads a well-formed state dict with other contents; no
other exception, no hang, and the peak resident memory of a batch of variants stays within
``PEAK_BOUND`` above what reading the sources once takes. The default suite runs 4 x 2,500
variants; ``-m slow`` runs 10^6 (see tests/checkpoint_fuzz.py for the mutations).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from maskbit_jax.convert.checkpoint_files import read_state_dict, write_state_dict

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
import checkpoint_fuzz  # noqa: E402

# Each source is at most ~1.4 MB; a variant may cost a small multiple of that, never more.
PEAK_BOUND = 64 << 20
SOURCE_LIMIT = 1_500_000  # golden .bin files up to this size are fuzzed (the larger one takes too long per variant)


@pytest.fixture(scope="module")
def sources(golden, golden_bar, tmp_path_factory) -> list[str]:
  out = tmp_path_factory.mktemp("fuzz_sources")
  bins = sorted(p for folder in (golden, golden_bar) for p in folder.glob("*.bin")
                if p.stat().st_size <= SOURCE_LIMIT)
  assert bins, "no golden .bin small enough to fuzz"
  smallest = min(bins, key=lambda p: p.stat().st_size)
  state = checkpoint_fuzz.load_all(str(smallest))
  checkpoint_fuzz.write_legacy(str(out / "golden_legacy.pt"), state)
  write_state_dict(out / "golden.safetensors", state)
  write_state_dict(out / "golden_stored.npz", state)
  npzs = sorted((p for folder in (golden, golden_bar) for p in folder.glob("*_state.npz")
                 if p.stat().st_size <= SOURCE_LIMIT), key=lambda p: p.stat().st_size)
  extra = [str(npzs[0])] if npzs else []
  files = [str(p) for p in bins] + [str(HERE / "data" / "legacy_format_small.pt"), str(out / "golden_legacy.pt"),
                                    str(out / "golden.safetensors"), str(out / "golden_stored.npz")] + extra
  assert checkpoint_fuzz.same(checkpoint_fuzz.load_all(str(out / "golden_legacy.pt")), state)
  return files


def _run_batch(sources, seed: int, count: int, scratch: pathlib.Path) -> dict:
  scratch.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, str(HERE / "checkpoint_fuzz.py"), str(seed), str(count), str(scratch),
                         *sources], capture_output=True, text=True, env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(result: dict, count: int) -> None:
  assert sum(result["counts"].values()) == count
  assert not result["failures"], "\n".join(result["failures"])
  assert result["counts"].get("error", 0) > count // 4  # the mutations do reach the checks
  assert result["counts"].get("identical", 0) > 0
  assert result["peak_above_baseline"] < PEAK_BOUND, result
  for fmt in (".bin", ".npz"):
    assert result["by_format"].get(fmt, {}).get("different", 0) == 0, result["by_format"]


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_checkpoints_load_identically_or_fail_by_name(sources, seed, tmp_path):
  count = 2_500
  _check(_run_batch(sources, seed, count, tmp_path), count)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 108))
def test_fuzzed_checkpoints_a_million(sources, seed, tmp_path):
  count = 125_000
  _check(_run_batch(sources, seed, count, tmp_path), count)


def test_sources_load(sources):
  for src in sources:
    state = read_state_dict(src)
    assert len(state) > 0, src
