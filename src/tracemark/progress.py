"""Rich progress bars on stderr, handed to library code as plain callbacks.

Library functions take ``progress(n)`` callables and know nothing about rich; the CLI
owns the display. Bars go to stderr so ``--json`` output on stdout stays clean. When
stderr is not a terminal (a log file, a CI job) bars would print nothing until the end,
so each stage prints one line as it starts and one as it ends instead.
"""

from __future__ import annotations

import contextlib
import time
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
    if not stderr.is_terminal:
        yield stage_lines
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


def stage_lines(description: str, total: int, transient: bool = False) -> Callable[[int], None]:
    """A stage reported in two plain lines (start, end with its time), for logs."""
    start = time.perf_counter()
    done = 0
    stderr.print(f"{description}: started ({total} to do)", highlight=False, soft_wrap=True)

    def advance(n: int = 1, *_rest) -> None:
        nonlocal done
        before, done = done, done + n
        if before < total <= done:
            seconds = time.perf_counter() - start
            stderr.print(
                f"{description}: done ({total}) in {seconds:.1f} s", highlight=False, soft_wrap=True
            )

    return advance
