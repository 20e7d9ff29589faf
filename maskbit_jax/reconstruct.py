"""``python -m maskbit_jax.reconstruct``: runs the reconstruct command, ``maskbit_jax.cli.reconstruct`` (see its help)."""

import sys

from maskbit_jax import cli_errors
from maskbit_jax.cli.reconstruct import main

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
