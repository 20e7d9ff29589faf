"""``python -m maskbit_jax.train``: runs the train command, ``maskbit_jax.cli.train`` (see its help)."""

import sys

from maskbit_jax import cli_errors
from maskbit_jax.cli.train import main

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
