"""The model code stands alone: ``maskbit_jax.models`` imports neither the converter nor the losses.

The dependency runs the other way (``convert/*_mapping.py`` name the models' parameters, ``losses/`` and
``train/`` use the models). Function-local imports count too.
"""

from __future__ import annotations

import ast

from conftest import REPO

FORBIDDEN = ("maskbit_jax.convert", "maskbit_jax.losses")
# torch_resize is moving out of losses/ (issue 20 item 7); until then the DINO discriminator's resize imports it.
ALLOWED = {("dino_discriminator.py", "maskbit_jax.losses.torch_resize")}


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
