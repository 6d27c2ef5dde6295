"""The ``tracemark`` command line: a typer app whose verbs are thin layers over the library.

Verbs live by audience: :mod:`.owner` (keygen, key-info, mark, audit, replay,
distinguish), :mod:`.publisher` (watermark, verify, watermark-report), :mod:`.lab`
(train, demo), :mod:`.evaluation` (evaluate, report) and :mod:`.serve`. Their flags come
from the library's options classes (:mod:`.flags`), so every default is written once.
Errors a user can cause are printed as one clear message (no traceback), exit status 2.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from ..errors import TracemarkError
from ..progress import stderr
from ..text import printable
from . import evaluation, lab, owner, publisher, serve  # noqa: F401  (each registers its verbs)
from .app import app

__all__ = ["app", "main"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``warning: ...``, not Python's source-line form (not wrapped
    by rich: the terminal wraps it, and paths in it stay whole)."""
    text = escape(printable(str(message)))
    stderr.print(f"[bold yellow]warning:[/bold yellow] {text}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, printing user errors without a traceback.

    Every error and warning is printed through :func:`tracemark.text.printable`: its
    text may come from a server or a file name, and must not drive the terminal.
    """
    import warnings

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        app(args=argv, prog_name="tracemark")
    except TracemarkError as exc:
        text = escape(printable(str(exc)))
        # one logical line (the terminal wraps it): file paths in it stay whole to copy
        stderr.print(f"[bold red]error:[/bold red] {text}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "onnxruntime", "onnx"):
            raise
        extra = "torch" if exc.name == "torch" else "onnx"
        hint = escape(f"this needs {exc.name}: pip install 'tracemark[{extra}]'")
        stderr.print(f"[bold red]error:[/bold red] {hint}", highlight=False, soft_wrap=True)
        sys.exit(2)
    finally:
        warnings.showwarning = previous
