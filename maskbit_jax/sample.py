"""``python -m maskbit_jax.sample``: runs the sample command, ``maskbit_jax.cli.sample`` (see its help).

Run only, never import this file: ``maskbit_jax.sample`` is the library's ``sample`` function, and Python binds an
imported submodule to its package's attribute of the same name, so importing this module would replace that
function with it. ``python -m`` runs the file as ``__main__`` without that binding, and the command's code
(its ``main`` for tests and console scripts) lives in ``maskbit_jax.cli.sample``, which no one's import confuses.
"""

import sys

from maskbit_jax import cli_errors
from maskbit_jax.cli.sample import main

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
