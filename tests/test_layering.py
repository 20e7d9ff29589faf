"""Layering: ``maskbit_jax.models`` imports neither the converter nor the losses; no module-level import cycle.

The dependency runs the other way (``convert/*_mapping.py`` name the models' parameters, ``losses/`` and
``train/`` use the models). Function-local imports count too.
"""

from __future__ import annotations

import ast

from conftest import REPO

FORBIDDEN = ("maskbit_jax.convert", "maskbit_jax.losses")
ALLOWED: set[tuple[str, str]] = set()  # (models file, imported name) pairs that may cross, with a reason each


def _imports(tree: ast.AST) -> set[str]:
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.update(f"{node.module}.{a.name}" for a in node.names)   # full names: module.attribute
  return names


def test_models_import_neither_convert_nor_losses():
  offenders = []
  for path in sorted((REPO / "maskbit_jax" / "models").glob("*.py")):
    for name in _imports(ast.parse(path.read_text())):
      if name.startswith(FORBIDDEN) and (path.name, name) not in ALLOWED:
        offenders.append(f"models/{path.name}: {name}")
  assert not offenders, "models/ must not import convert/ or losses/: " + ", ".join(offenders)


def _module_graph() -> dict[str, set[str]]:
  """Module -> the package modules its top-level imports load (a submodule's import of its own package's
  ``__init__`` is not an edge: Python runs that first anyway)."""
  root = REPO / "maskbit_jax"
  files = {}
  for path in root.rglob("*.py"):
    parts = path.relative_to(REPO).with_suffix("").parts
    files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  graph = {}
  for name, path in files.items():
    edges = set()
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files]
        targets = subs + ([node.module] if len(subs) < len(node.names) else [])
      else:
        continue
      edges.update(t for t in targets if t in files and not name.startswith(t + "."))
    graph[name] = edges
  return graph


def test_no_module_level_import_cycle():
  graph = _module_graph()
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  cycles = []

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert len(graph) > 100 and not cycles, cycles
