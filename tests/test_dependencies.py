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


def _declared() -> tuple[set[str], set[str]]:
  """(required, optional) distribution names that apply on this platform (tensorflow-cpu or tensorflow)."""
  from packaging.requirements import Requirement

  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  here = lambda specs: {_normal(r.name) for r in map(Requirement, specs) if r.marker is None or r.marker.evaluate()}
  required = here(project["dependencies"])
  optional = set().union(*(here(specs) for specs in project.get("optional-dependencies", {}).values()))
  return required, optional


def _imported_modules() -> set[str]:
  out = set()
  for path in (REPO / "maskbit_jax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        out.update(a.name.split(".")[0] for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        out.add(node.module.split(".")[0])
  return {m for m in out if m not in sys.stdlib_module_names and m not in ("maskbit_jax", "__future__")}


def test_every_import_is_declared_and_every_declaration_imported():
  required, optional = _declared()
  dists = importlib.metadata.packages_distributions()
  used = set()
  for module in sorted(_imported_modules()):
    names = {_normal(d) for d in dists.get(module, [])}
    assert names, f"maskbit_jax imports {module!r}, which no installed distribution provides"
    assert names & (required | optional), f"maskbit_jax imports {module!r} ({sorted(names)}), not in pyproject.toml"
    used |= names
  unused = required - used - set(NOT_IMPORTED)
  assert not unused, f"declared in pyproject.toml but never imported by maskbit_jax: {sorted(unused)}"
