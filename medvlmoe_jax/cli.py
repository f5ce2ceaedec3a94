"""What every command-line script shares: bad user input ends in one `error: ...` line on
stderr (naming the file, split, key or row) and exit status 1, while a bug keeps its
traceback.

It sits below every layer, so that data, eval and convert code can raise `BadInputError` and
every script can catch it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable

from absl import app


class BadInputError(ValueError):
  """A file, flag or config value given by the user that cannot be used as it is (a
  ValueError, so that code catching ValueError keeps working)."""


# Raised for what the user gave, with a message that names it. ValueError as a whole is not
# here: a bug in shapes or numerics raises it too, and would lose its traceback.
BAD_INPUT = (BadInputError, FileNotFoundError, FileExistsError, NotADirectoryError,
             IsADirectoryError, PermissionError)


def one_line(error: BaseException) -> str:
  """The message on one line: a list indented under 'title:' is joined with '; '."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  out = lines[0] if lines else type(error).__name__
  for line in lines[1:]:
    out += (" " if out.endswith(":") else "; ") + line
  return out


@contextlib.contextmanager
def exit_on_bad_input(also: tuple[type[BaseException], ...] = ()):
  """BAD_INPUT (and the script's own `also` types) -> sys.exit('error: ...')."""
  try:
    yield
  except BAD_INPUT + tuple(also) as e:
    sys.exit(f"error: {one_line(e)}")


def undash(arg: str) -> str:
  """--skip-bad=x -> --skip_bad=x; values and positional arguments are left alone."""
  if not arg.startswith("--") or arg == "--":
    return arg
  name, sep, value = arg[2:].partition("=")
  return "--" + name.replace("-", "_") + sep + value


def run(main: Callable, also: tuple[type[BaseException], ...] = ()) -> None:
  """absl's app.run, with bad input as one line and dashed flag spellings accepted."""
  def guarded(argv):
    with exit_on_bad_input(also):
      return main(argv)
  app.run(guarded, argv=[undash(a) for a in sys.argv])
