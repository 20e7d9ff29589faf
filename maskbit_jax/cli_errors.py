"""How the commands talk to a user: plain help with defaults, and a mistake as one ``error:`` line.

A wrong path, a misspelt config key or a value out of range is the user's to fix; a Python
traceback in front of the message only hides it. ``--debug`` (or ``MASKBIT_DEBUG=1``) restores the
traceback for bug reports.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from maskbit_jax.hub import WeightsError

# What the library raises at its boundaries for bad input: the message names the problem (WeightsError: a
# released file that cannot be had, e.g. offline and not in the cache).
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, WeightsError)
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """The command's docstring as written (its examples keep their lines) and each option's default, where it
  has one worth saying (not None or False) that its help does not already give."""

  def _get_help_string(self, action):
    text = action.help or ""
    if action.default in (None, False, argparse.SUPPRESS) or "default" in text or action.option_strings == []:
      return text
    return f"{text} (default: {action.default})" if text else f"default: {action.default}"


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
  """An ArgumentParser for ``python -m maskbit_jax.<command>``: docstring as plain text (no reST
  double backticks), defaults shown, and ``--debug`` listed (``run`` takes it out before parsing)."""
  p = argparse.ArgumentParser(prog=prog, description=(doc or "").replace("``", ""), formatter_class=HelpFormatter)
  p.add_argument("--debug", action="store_true", help="show the traceback of an error (or set MASKBIT_DEBUG=1)")
  return p
