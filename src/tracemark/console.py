"""The ``tracemark`` console script: Ctrl-C at any moment, start-up included, ends quietly.

The command line imports typer, rich, numpy and pydantic before it can install a handler;
a Ctrl-C that lands while they load would print a traceback. This module imports nothing
heavy itself, so it catches that interrupt and exits 130 like every other one.

A library may swallow the KeyboardInterrupt a Ctrl-C raises (one did, while typer loaded
its help formatter, measured once in 29 tries): the interrupt is therefore also recorded
here, and a command interrupted that way never starts, or exits 130 when it ends.
"""

from __future__ import annotations

import signal
import sys

_interrupted = False


def _on_sigint(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _quit() -> None:
    sys.stderr.write("interrupted\n")
    sys.exit(130)


def main() -> None:
    """Run the command line; an interrupt before or after its own handling exits 130."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)  # as Python's own, and remembered
    try:
        from .cli import main as run

        if _interrupted:  # swallowed while the command line loaded: do nothing
            _quit()
        run()
    except KeyboardInterrupt:
        _quit()
    except SystemExit as exc:
        if _interrupted and exc.code in (0, None):
            _quit()
        raise
    if _interrupted:
        _quit()
