"""``python -m maskbit_jax.edit``: runs the edit command, ``maskbit_jax.cli.edit`` (see its help).

Run only, never import this file: ``maskbit_jax.edit`` is the library's ``edit`` function, and Python binds an
imported submodule to its package's attribute of the same name, so importing this module would replace that
function with it. ``python -m`` runs the file as ``__main__`` without that binding, and the command's code
(its ``main`` for tests and console scripts) lives in ``maskbit_jax.cli.edit``, which no one's import confuses.
"""

import sys

from maskbit_jax import cli_errors
from maskbit_jax.cli.edit import main

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
