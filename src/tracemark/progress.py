"""Rich progress bars on stderr, handed to library code as plain callbacks.

Library functions take ``progress(n)`` callables and know nothing about rich; the CLI
owns the display. Bars go to stderr so ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True)
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressFactory]:
    """Yield ``factory(description, total) -> advance(n)``; each call adds a bar (a
    ``transient`` one is removed once it is full)."""
    if not enabled:
        yield lambda _description, _total, transient=False: lambda _n=1, *_rest: None
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as bars:

        def factory(description: str, total: int, transient: bool = False) -> Callable[[int], None]:
            task = bars.add_task(description, total=total)

            def advance(n: int = 1, *_rest) -> None:
                bars.advance(task, n)
                if transient and bars.tasks[bars.task_ids.index(task)].finished:
                    bars.remove_task(task)

            return advance

        yield factory
