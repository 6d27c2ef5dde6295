"""Where cells run: in this process, in local worker processes, or as Ray tasks.

Every executor yields finished cells to the driver, which alone writes the results store.
A cell that raises becomes a :class:`CellFailure` (with its traceback) instead of stopping
the run: the other cells go on, and the failed one, never stored, is tried again by the
next run. Ctrl-C and kills still stop everything. None schedules anything itself: the
local pool is ``multiprocessing``'s, the cluster is Ray's. A cell pins torch's thread
count (the spec's), so its rows are the same whatever runs it.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TracemarkError
from .cells import Cell
from .run import CellResult, ProgressFactory, run_cell


@dataclass(frozen=True)
class CellFailure:
    """A cell that raised: which, the error in one line, and the whole traceback
    (``expected``: a :class:`TracemarkError`, a clear message, not a bug)."""

    cell_id: str
    error: str
    details: str
    expected: bool


def attempt(
    cell: Cell,
    cache: Path | None,
    device: str = "auto",
    progress: ProgressFactory | None = None,
) -> CellResult | CellFailure:
    """:func:`run_cell`, with an error in the cell returned rather than raised."""
    try:
        return run_cell(cell, cache, device, progress)
    except Exception as exc:  # any bug in one cell must not stop the others
        expected = isinstance(exc, TracemarkError)
        error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        return CellFailure(cell.cell_id, error, traceback.format_exc(), expected)


def run_local(
    cells: Sequence[Cell],
    cache: Path | None,
    device: str = "auto",
    workers: int = 1,
    progress: ProgressFactory | None = None,
) -> Iterator[CellResult | CellFailure]:
    """Run cells here (``workers`` = 1, with inner progress bars) or in worker processes."""
    if workers < 1:
        raise TracemarkError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        for cell in cells:
            yield attempt(cell, cache, device, progress)
        return
    context = multiprocessing.get_context("spawn")  # no torch state copied from the driver
    pool = context.Pool(workers)
    try:
        yield from pool.imap_unordered(_run, [(cell, cache, device) for cell in cells])
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C or an error: stop every worker now; finished cells are kept
        raise
    finally:
        pool.join()


def _run(args: tuple) -> CellResult | CellFailure:
    cell, cache, device = args
    return attempt(cell, cache, device)


def run_ray(
    cells: Sequence[Cell],
    cache: Path | None,
    address: str = "auto",
    device: str = "auto",
) -> Iterator[CellResult | CellFailure]:
    """Run every cell as a Ray task (asking for a GPU when the cluster has one); results
    flow back here. ``address``: "auto" (the cluster in RAY_ADDRESS, or a new local
    instance) or a cluster's address. Reuses a Ray instance this process already started.

    On a cluster of several machines, ``cache`` must be a shared folder (or each machine
    trains its own clean models).
    """
    try:
        import ray
    except ModuleNotFoundError:
        raise TracemarkError("--ray needs Ray: pip install 'tracemark[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, log_to_driver=False)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    threads = max((c.spec.torch_threads for c in cells), default=1)
    task = ray.remote(num_cpus=threads, num_gpus=gpus)(attempt)
    pending = [task.remote(cell, cache, device) for cell in cells]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref)
