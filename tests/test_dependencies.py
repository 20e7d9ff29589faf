"""Every package the library imports is declared in pyproject.toml, and every declared one is imported."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from conftest import REPO

# Declared without an import of ours, each for a stated reason.
NOT_IMPORTED = {
    "importlib-resources": "etils' resource helpers need it for tfds.data_source and neither installs it",
}


def _normal(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


# The extras the library itself imports from (the others, torch and dev, are for tests and tools): a package
# only an extra declares is imported inside a function, where its absence can be answered, never at import.
LIBRARY_EXTRAS = ("tensorboard",)


def _declared() -> tuple[set[str], dict[str, set[str]]]:
  """(required, {extra: its names}) distribution names that apply on this platform (tensorflow-cpu or
  tensorflow); an extra naming this project (dev's ``maskbit_jax[tensorboard]``) gets that extra's names."""
  from packaging.requirements import Requirement

  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  here = lambda specs: [r for r in map(Requirement, specs) if r.marker is None or r.marker.evaluate()]
  required = {_normal(r.name) for r in here(project["dependencies"])}
  groups = project.get("optional-dependencies", {})
  own = lambda r: _normal(r.name) == _normal(project["name"])
  extras = {}
  for extra, specs in groups.items():
    reqs = here(specs)
    extras[extra] = {_normal(r.name) for r in reqs if not own(r)}
    for r in filter(own, reqs):
      extras[extra] |= {_normal(s.name) for s in here(groups[next(iter(r.extras))])}
  return required, extras


def _imports() -> dict[str, set[bool]]:
  """{top-level module: whether each import of it is deferred (inside a function)} over maskbit_jax."""
  out: dict[str, set[bool]] = {}

  def visit(node, deferred: bool):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    for name in names:
      out.setdefault(name.split(".")[0], set()).add(deferred)
    inside = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    for child in ast.iter_child_nodes(node):
      visit(child, inside)

  for path in (REPO / "maskbit_jax").rglob("*.py"):
    visit(ast.parse(path.read_text()), False)
  return {m: d for m, d in out.items() if m not in sys.stdlib_module_names and m not in ("maskbit_jax", "__future__")}


def test_every_import_is_declared_and_every_declaration_imported():
  required, extras = _declared()
  optional = set().union(*extras.values())
  dists = importlib.metadata.packages_distributions()
  used = set()
  for module, deferred in sorted(_imports().items()):
    names = {_normal(d) for d in dists.get(module, [])}
    assert names, f"maskbit_jax imports {module!r}, which no installed distribution provides"
    assert names & (required | optional), f"maskbit_jax imports {module!r} ({sorted(names)}), not in pyproject.toml"
    if not names & required:
      assert deferred == {True}, f"{module!r} comes from an extra only, yet maskbit_jax imports it at import time"
    used |= names
  unused = required - used - set(NOT_IMPORTED)
  assert not unused, f"declared in pyproject.toml but never imported by maskbit_jax: {sorted(unused)}"
  for extra in LIBRARY_EXTRAS:
    assert extras[extra] <= used, f"[{extra}] declares {sorted(extras[extra] - used)}, which maskbit_jax never imports"
    assert not extras[extra] & required, f"[{extra}]'s packages {sorted(extras[extra] & required)} are also required"
  assert extras["tensorboard"] <= extras["dev"], "the dev extra (the test suite) includes [tensorboard]"


def test_the_ci_constraints_pin_every_declared_package_within_its_range():
  """constraints/ci.txt (what .ci/run installs with) pins each package of what it installs (the core and the
  dev extra, which takes [tensorboard]) at a version pyproject allows."""
  from packaging.requirements import Requirement

  pins = dict(line.split("==") for line in (REPO / "constraints" / "ci.txt").read_text().splitlines()
              if line and not line.startswith("#"))
  pins = {_normal(k): v for k, v in pins.items()}
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  groups = project["optional-dependencies"]
  specs = project["dependencies"] + groups["dev"] + groups["tensorboard"]
  for req in map(Requirement, specs):
    if _normal(req.name) == _normal(project["name"]) or (req.marker is not None and not req.marker.evaluate()):
      continue
    assert _normal(req.name) in pins, f"{req.name} is not in constraints/ci.txt: run constraints/freeze.py"
    assert req.specifier.contains(pins[_normal(req.name)], prereleases=True), \
        f"constraints/ci.txt pins {req.name}=={pins[_normal(req.name)]}, outside {req}: run constraints/freeze.py"
