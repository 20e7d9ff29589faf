"""``python -m maskbit_jax.pretokenize``: runs the pretokenize command, ``maskbit_jax.cli.pretokenize`` (see its help)."""

import sys

from maskbit_jax import cli_errors
from maskbit_jax.cli.pretokenize import main

if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
