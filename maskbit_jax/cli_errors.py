"""How the commands report a user's mistake: one ``error:`` line, no traceback (``--debug`` shows it).

A wrong path, a misspelt config key or a value out of range is the user's to fix; a Python
traceback in front of the message only hides it. ``--debug`` (or ``MASKBIT_DEBUG=1``) restores the
traceback for bug reports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# What the library raises at its boundaries for bad input: the message names the problem.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)
EXIT_USER_ERROR = 2  # argparse's code for a usage error


def wants_debug(argv: list[str]) -> bool:
  return "--debug" in argv or os.environ.get("MASKBIT_DEBUG", "") not in ("", "0")


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
  """``main(argv)`` with a user error printed as ``error: ...`` and exit code 2; ``--debug`` re-raises."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = wants_debug(argv)
  argv = [a for a in argv if a != "--debug"]
  try:
    return main(argv)
  except USER_ERRORS as e:
    if debug:
      raise
    text = str(e) or type(e).__name__
    print(f"error: {text}\n(--debug or MASKBIT_DEBUG=1 shows the traceback)", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
