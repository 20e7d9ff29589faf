"""Writes constraints/ci.txt: the exact installed version of every package maskbit_jax[dev,...] pulls in.

Run with the interpreter of a venv the whole test suite passes in (``.venv/bin/python constraints/freeze.py``).
Unlike ``pip freeze`` it pins only the dependency closure of this project and its extras, so whatever else the
venv holds does not become a constraint of CI.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import sys
import tomllib

from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = "maskbit_jax"


def normal(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def applies(req: Requirement, extras: set[str]) -> bool:
  if req.marker is None:
    return True
  return any(req.marker.evaluate({"extra": e}) for e in extras or {""})


def closure(requirements: list[Requirement]) -> dict[str, str]:
  """``{distribution: installed version}`` of ``requirements`` and everything they require, transitively."""
  pinned: dict[str, str] = {}
  todo = [(r, set(r.extras)) for r in requirements]
  seen: set[tuple[str, frozenset]] = set()
  while todo:
    req, extras = todo.pop()
    key = (normal(req.name), frozenset(extras))
    if key in seen or normal(req.name) == normal(PROJECT):
      continue
    seen.add(key)
    try:
      dist = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
      continue  # not for this platform / not installed here: no pin
    pinned[normal(dist.metadata["Name"])] = dist.version
    for spec in dist.requires or []:
      sub = Requirement(spec)
      if applies(sub, extras):
        todo.append((sub, set(sub.extras)))
  return pinned


def main() -> None:
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  specs = list(project["dependencies"]) + [s for group in project["optional-dependencies"].values() for s in group]
  reqs = [r for r in map(Requirement, specs) if r.marker is None or r.marker.evaluate()]
  pins = closure(reqs)
  lines = [f"# pip install -c constraints/ci.txt: the set .ci/run tests; written by constraints/freeze.py "
           f"(Python {sys.version_info.major}.{sys.version_info.minor}, {sys.platform})"]
  lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
  (REPO / "constraints" / "ci.txt").write_text("\n".join(lines) + "\n")
  print(f"{len(pins)} pins in constraints/ci.txt")


if __name__ == "__main__":
  main()
