"""The evaluation harness: an experiment's cells, run resumably into a results store.

    spec = load_spec("null")                       # a file, or a shipped spec's name
    summary = evaluate(spec, "runs/null.db")       # skips cells already in the store
    report = summarise(open_store("runs/null.db")) # rates with exact intervals

:mod:`.spec` declares experiments; :mod:`.cells` names their units of work; :mod:`.run`
runs one (mark, train, audit); :mod:`.executors` run many (here, in worker processes, or
on Ray); :mod:`.store` keeps the results (SQLite); :mod:`.report` and :mod:`.render` say
what they show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from .cells import Cell, cells_of, select
from .executors import CellFailure, run_local, run_ray
from .report import summarise
from .run import CellResult, run_cell
from .spec import ExperimentSpec, load_spec, parse_spec, shipped_specs
from .store import Store, open_store

__all__ = [
    "Cell",
    "CellFailure",
    "CellResult",
    "ExperimentSpec",
    "RunSummary",
    "Store",
    "cells_of",
    "evaluate",
    "load_spec",
    "open_store",
    "parse_spec",
    "run_cell",
    "select",
    "shipped_specs",
    "summarise",
]

# The phases of a cell that are the methods' and the victims' own work, not the harness's.
WORK = ("mark", "train", "measure", "audit")


@dataclass
class RunSummary:
    """What one run of a spec did: cells computed and skipped, and where the time went."""

    cells: int
    skipped: int
    computed: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    parallel: bool = False
    failed: list[CellFailure] = field(default_factory=list)

    @property
    def overhead(self) -> float | None:
        """The harness's share of the time: everything but marking, training, measuring and
        auditing (data loading, world building, the store, dispatch). In-process, of the
        run's wall time; with workers, of the cells' own time (dispatch left out)."""
        work = sum(self.phases.get(p, 0.0) for p in WORK)
        total = self.phases.get("total", 0.0) if self.parallel else self.seconds
        if not self.computed or not total:
            return None
        return max(0.0, (total - work) / total)


def evaluate(
    spec: ExperimentSpec,
    db: str | Path,
    *,
    cache: str | Path | None = None,
    workers: int = 1,
    ray: str | None = None,
    device: str = "auto",
    methods: Collection[str] | None = None,
    seeds: Collection[int] | None = None,
    progress: Callable | None = None,
    on_cell: Callable[[Cell, CellResult], None] | None = None,
    on_failure: Callable[[Cell, CellFailure], None] | None = None,
) -> RunSummary:
    """Run every cell of ``spec`` not yet in the store at ``db``.

    ``cache``: where clean models are kept (default: ``cache/`` beside the store).
    ``workers`` > 1 runs cells in local processes; ``ray`` ("auto" or an address) runs
    them as Ray tasks. ``methods`` and ``seeds`` run only those method entries and seeds
    (see :func:`.cells.select`). ``progress``: a bar factory (see :mod:`tracemark.progress`);
    ``on_cell(cell, result)`` is called as each cell is stored. A cell that raises is not
    stored: it goes into ``summary.failed`` (and to ``on_failure``) while the others run
    on, and the next run tries it again. Interrupted (Ctrl-C or a kill), a run keeps every
    finished cell; running it again computes the rest.
    """
    db = Path(db)
    cache = Path(cache) if cache is not None else db.parent / "cache"
    every = select(cells_of(spec), methods, seeds)  # a bad name fails before the store opens
    store = Store(db)
    done = store.finished()
    todo = [c for c in every if c.cell_id not in done]
    by_id = {c.cell_id: c for c in todo}
    summary = RunSummary(
        cells=len(every), skipped=len(every) - len(todo), parallel=ray is not None or workers > 1
    )
    bar = progress("cells", len(todo)) if progress and todo else None
    start = time.perf_counter()
    with store, store.run(spec.name, spec.model_dump(), len(every)) as record:
        if ray is not None:
            results = run_ray(todo, cache, ray, device)
        else:
            inner = progress if workers == 1 else None
            results = run_local(todo, cache, device, workers, _transient(inner))
        try:
            for result in results:
                cell = by_id[result.cell_id]
                if bar:
                    bar(1)
                if isinstance(result, CellFailure):
                    summary.failed.append(result)
                    if on_failure:
                        on_failure(cell, result)
                    continue
                store.add(result, spec.alpha, cell.payload())
                summary.computed += 1
                for phase, seconds in result.timings.items():
                    summary.phases[phase] = summary.phases.get(phase, 0.0) + seconds
                if on_cell:
                    on_cell(cell, result)
        finally:
            summary.seconds = round(time.perf_counter() - start, 1)
            record["computed"], record["seconds"] = summary.computed, summary.seconds
    return summary


def _transient(progress: Callable | None) -> Callable | None:
    """A cell's own bars (training, audits) disappear when the cell is done."""
    if progress is None:
        return None
    return lambda description, total: progress(description, total, transient=True)
