"""Where long steps keep their progress, for the span of a ``with`` block.

Crafting a UBW-C release takes over an hour on 2 cores, deep inside a method's ``mark``.
The evaluation harness names a folder around the call (:func:`keep_progress_in`); a
step that can resume (:func:`tracemark.methods.ubw.clean_label.craft`) asks for it with
:func:`progress_folder` and keeps its state there, so a run killed half-way goes on
from where it stopped. Outside such a block there is no folder, and nothing is kept.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path

_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("progress", default=None)


@contextlib.contextmanager
def keep_progress_in(folder: Path | None) -> Iterator[None]:
    """Steps run inside the block keep their progress in ``folder`` (None: nowhere)."""
    token = _FOLDER.set(None if folder is None else Path(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)


def progress_folder() -> Path | None:
    """The folder the caller named for progress, or None."""
    return _FOLDER.get()
