"""``python -m maskbit_jax.convert``: runs the convert command, ``maskbit_jax.cli.convert`` (see its help)."""

import sys

from maskbit_jax import cli_errors
from maskbit_jax.cli.convert import main

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
