"""``python -m maskbit_jax.evaluate``: runs the evaluate command, ``maskbit_jax.cli.evaluate`` (see its help)."""

import sys

from maskbit_jax import cli_errors
from maskbit_jax.cli.evaluate import main

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
