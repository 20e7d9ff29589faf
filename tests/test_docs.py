"""The shell commands of docs/*.md that are cheap run as written.

A fenced ```bash block is run when it holds a line ``# docs-test``. A marker line of the form
``# docs-test: run with NEW in place of OLD`` (one or more) also replaces OLD by NEW in the block
first: the page says so where it shows a full-size command that the test runs on a tiny config.
The marked blocks of a page run in order, in one temporary folder per page (a later block may use
what an earlier one wrote), under bash with ``set -euo pipefail``, with ``python`` being this
interpreter, ``configs/`` linked from the repository; a block is given up on only when it stops
making progress (``proc_wait``), never for being slow. Blocks without
the marker (released checkpoints, ImageNet, long runs) are shown only.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time

import pytest

import proc_wait
from conftest import REPO, drop_simulated_devices

DOCS = REPO / "docs"
PAGES = ("training", "converting", "sampling", "evaluation", "bar", "reliability", "architecture")
MARKER = re.compile(r"^#\s*docs-test(?::\s*run with (\S+) in place of (\S+))?\s*$")


def bash_blocks(text: str) -> list[str]:
  """The bodies of the fenced ```bash blocks of a markdown text, in order."""
  return re.findall(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)


def marked_blocks(text: str) -> list[str]:
  """The blocks to run, with their substitutions applied (marker lines kept: they are comments)."""
  out = []
  for block in bash_blocks(text):
    marks = [m for m in (MARKER.match(line.strip()) for line in block.splitlines()) if m]
    if not marks:
      continue
    for m in marks:
      if m.group(1):
        new, old = m.group(1), m.group(2)
        if old not in block.replace(m.group(0), ""):
          raise AssertionError(f"docs-test marker substitutes {old!r}, which the block does not contain:\n{block}")
        block = "\n".join(line if MARKER.match(line.strip()) else line.replace(old, new)
                          for line in block.splitlines())
    out.append(block)
  return out


def test_marker_parsing():
  page = ("```bash\n# docs-test: run with tiny.py in place of big.py\npython x.py --config big.py\n```\n"
          "```bash\npython not_run.py\n```\n"
          "```python\n# docs-test\nprint()\n```\n"
          "```bash\n# docs-test\necho a \\\n  b\n```\n")
  blocks = marked_blocks(page)
  assert len(blocks) == 2
  assert "--config tiny.py" in blocks[0] and "big.py" in blocks[0].splitlines()[0]
  assert blocks[1] == "# docs-test\necho a \\\n  b\n"
  with pytest.raises(AssertionError, match="absent.py"):
    marked_blocks("```bash\n# docs-test: run with a in place of absent.py\necho\n```\n")


@pytest.mark.parametrize("page", PAGES)
def test_page_links_resolve(page):
  text = (DOCS / f"{page}.md").read_text()
  assert bash_blocks(text), f"docs/{page}.md has no bash block"
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
    if "://" not in target:
      assert (DOCS / target).exists(), f"docs/{page}.md links to {target}, which does not exist"


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory):
  """PATH with ``python`` = this interpreter; one CPU device; the repository importable."""
  bin_dir = tmp_path_factory.mktemp("bin")
  shim = bin_dir / "python"
  shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  shim.chmod(0o755)
  env = dict(os.environ)
  drop_simulated_devices(env)
  env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  return env


@pytest.mark.parametrize("page", PAGES)
def test_docs_commands_run(page, tmp_path, shell_env):
  blocks = marked_blocks((DOCS / f"{page}.md").read_text())
  if not blocks:
    pytest.skip(f"docs/{page}.md marks no block with # docs-test")
  (tmp_path / "configs").symlink_to(REPO / "configs")
  start, cpu = time.perf_counter(), _children_cpu()
  for i, block in enumerate(blocks):
    try:
      proc = proc_wait.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=tmp_path, env=shell_env)
    except subprocess.TimeoutExpired:
      pytest.fail(f"docs/{page}.md block {i} made no progress for {proc_wait.STALL_S:.0f} s:\n{block}")
    assert proc.returncode == 0, (f"docs/{page}.md block {i} failed (exit {proc.returncode}):\n{block}\n"
                                  f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
  print(f"docs/{page}.md: {len(blocks)} block(s), {time.perf_counter() - start:.1f} s wall, "
        f"{_children_cpu() - cpu:.1f} s CPU")


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime
