"""The ``maskbit-*`` commands of ``[project.scripts]``: each is its ``python -m maskbit_jax.<command>`` twin.

Each goes through ``cli_errors.run`` as the ``-m`` form does, so a user's mistake is one ``error:`` line and exit
code 2 either way. The command's module is imported only when its command runs (JAX and TF start-up is slow).
"""

from __future__ import annotations

import functools
import importlib

from maskbit_jax import cli_errors

# console script -> the module whose main(argv=None) returns its exit code
COMMANDS = {
    "maskbit-train": "maskbit_jax.cli.train",
    "maskbit-sample": "maskbit_jax.cli.sample",
    "maskbit-evaluate": "maskbit_jax.cli.evaluate",
    "maskbit-convert": "maskbit_jax.cli.convert",
    "maskbit-pretokenize": "maskbit_jax.cli.pretokenize",
    "maskbit-reconstruct": "maskbit_jax.cli.reconstruct",
    "maskbit-edit": "maskbit_jax.cli.edit",
}


def _run(command: str) -> int:
  return cli_errors.run(importlib.import_module(COMMANDS[command]).main)


# the entry points [project.scripts] names (each a callable taking no argument)
train = functools.partial(_run, "maskbit-train")
sample = functools.partial(_run, "maskbit-sample")
evaluate = functools.partial(_run, "maskbit-evaluate")
convert = functools.partial(_run, "maskbit-convert")
pretokenize = functools.partial(_run, "maskbit-pretokenize")
reconstruct = functools.partial(_run, "maskbit-reconstruct")
edit = functools.partial(_run, "maskbit-edit")
