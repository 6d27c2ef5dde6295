"""The ``tracemark`` console script: Ctrl-C at any moment, start-up included, ends quietly.

The command line imports typer, rich, numpy and pydantic before it can install a handler;
a Ctrl-C that lands while they load would print a traceback. This module imports nothing
heavy itself, so it catches that interrupt and exits 130 like every other one.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line; an interrupt before or after its own handling exits 130."""
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
