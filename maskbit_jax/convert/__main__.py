from maskbit_jax import cli_errors
from maskbit_jax.convert.cli import main

raise SystemExit(cli_errors.run(main))
