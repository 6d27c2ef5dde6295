"""The ``tracemark`` console script: Ctrl-C at any moment, start-up included, ends quietly.

The command line imports typer, rich, numpy and pydantic before it can install a handler;
a Ctrl-C that lands while they load would print a traceback. This module imports nothing
heavy itself, so it catches that interrupt and exits 130 like every other one.

A library may swallow the KeyboardInterrupt a Ctrl-C raises (one did, while typer loaded
its help formatter, measured once in 29 tries): the interrupt is therefore also recorded
here, and a command interrupted that way never starts, or exits 130 when it ends.

A KeyboardInterrupt raised while a library with native code initialises can abort the
process instead (SIGABRT and a C-level stack dump: 2 of 320 Ctrl-Cs timed 1.0 to 2.2 s
into an audit, inside ``import torch``; 0 of 200 since). The first import of each of
``NATIVE_LIBRARIES`` therefore holds a Ctrl-C back until the library has loaded, and
raises it then.
"""

from __future__ import annotations

import importlib.machinery
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

NATIVE_LIBRARIES = ("torch", "onnxruntime", "numba", "grpc")

_interrupted = False


def _uninterrupted(exec_module: Callable[[Any], None]) -> Callable[[Any], None]:
    """``exec_module`` with SIGINT held back while it runs (main thread only), then the
    handler that was in place called, as if the key had been pressed just after."""

    def run(module: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return exec_module(module)
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):  # ignored, or not Python's to handle: leave it be
            return exec_module(module)
        pressed: list[int] = []
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
        try:
            exec_module(module)
        finally:
            signal.signal(signal.SIGINT, previous)
        if pressed:
            previous(signal.SIGINT, None)

    return run


class NativeLoadFinder:
    """A meta path finder that finds nothing of its own: for the first import of each
    named library it returns the regular spec with a loader that holds Ctrl-C back
    while the library (and all it imports) loads (see the module's docstring)."""

    def __init__(self, names: Iterable[str] = NATIVE_LIBRARIES) -> None:
        self.names = set(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.names:
            return None
        self.names.discard(name)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return None  # the other finders decide, as if this one were not there
        spec.loader.exec_module = _uninterrupted(spec.loader.exec_module)
        return spec


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
    sys.meta_path.insert(0, NativeLoadFinder())
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
