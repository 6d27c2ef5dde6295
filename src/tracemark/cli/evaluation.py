"""The evaluation verbs: run an experiment spec (``evaluate``), report on its results."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import TracemarkError
from ..progress import progress_bars, stderr
from .app import app, stdout


@app.command()
def evaluate(
    spec: Annotated[
        str, typer.Argument(help="Experiment spec (TOML), or a shipped spec's name (e.g. null).")
    ],
    db: Annotated[
        Optional[Path],
        typer.Option(help="Results store (SQLite).", show_default="runs/SPEC-NAME.db"),
    ] = None,
    cache: Annotated[
        Optional[Path],
        typer.Option(help="Where clean models are kept.", show_default="beside --db"),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Run cells in this many local processes.")
    ] = 1,
    ray: Annotated[
        Optional[str],
        typer.Option(
            help="Run cells as Ray tasks: 'auto' or a cluster address (tracemark\\[ray]).",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto (a GPU when there is one), cpu, cuda[:N].")
    ] = "auto",
    method: Annotated[
        Optional[list[str]],
        typer.Option(help="Run only this method entry of the spec (repeatable).", metavar="NAME"),
    ] = None,
    seed: Annotated[
        Optional[list[int]], typer.Option(help="Run only this seed of the spec (repeatable).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run every cell of SPEC not yet in the results store; re-run to resume.

    Each cell trains a victim with its members' marked data, and audits every member,
    every never-published key, and every key on the clean model of the same recipe and
    seed, in every access mode. `tracemark report DB` then shows the rates. --method and
    --seed run a part of the spec (one seed per machine, say) into the same kind of store.
    """
    from ..evaluate import cells_of, load_spec, select
    from ..evaluate import evaluate as run

    if cache is not None and cache.exists() and not cache.is_dir():
        raise TracemarkError(f"--cache {cache} is a file; give a folder for the clean models")
    experiment = load_spec(spec)
    db = db or Path("runs") / f"{experiment.name}.db"
    every = cells_of(experiment)
    chosen = len(select(every, method, seed))
    of = "" if chosen == len(every) else f" (of {len(every)}: --method/--seed)"
    stderr.print(f"{experiment.name}: {chosen} cells{of} into {db}", highlight=False)
    try:
        with progress_bars(not quiet) as bars, terminate_as_interrupt():
            summary = run(
                experiment,
                db,
                cache=cache,
                workers=workers,
                ray=ray,
                device=device,
                methods=method,
                seeds=seed,
                progress=bars,
                on_cell=say_cell,
                on_failure=say_failure,
            )
    except KeyboardInterrupt:
        stderr.print(
            f"interrupted: every finished cell is in {db}; run the same command again "
            "to compute the rest"
        )
        raise typer.Exit(130) from None
    overhead = summary.overhead
    share = "" if overhead is None else f"; harness overhead {overhead:.1%} of the wall time"
    stderr.print(
        f"{summary.computed} cells computed, {summary.skipped} already in the store, in "
        f"{summary.seconds} s{share}. Next: tracemark report {db} -o DIR",
        highlight=False,
    )
    stop_if_failed(summary.failed)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop) ends the run as Ctrl-C does: the worker
    processes are stopped with the driver instead of computing on as orphans."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a caller's thread keeps its own
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def say_cell(cell, result) -> None:
    """One line per finished cell: its rates in the first access mode, accuracy, time."""
    access = cell.spec.accesses[0]
    rows = [a for a in result.audits if a.access == access]

    def count(model: str, member: bool | None) -> str:
        chosen = [a for a in rows if a.model == model and (member is None or a.member == member)]
        return f"{sum(a.decision for a in chosen)}/{len(chosen)}"

    acc = "-" if result.marked_accuracy is None else f"{result.marked_accuracy:.3f}"
    stderr.print(
        escape(
            f"{cell.label}: TPR {count('marked', True)}, FPR {count('marked', False)}, "
            f"clean {count('clean', None)} ({access}); accuracy {acc} / "
            f"{result.clean_accuracy:.3f}; {result.timings.get('total', 0):.0f} s"
        ),
        highlight=False,
    )


def say_failure(cell, failure) -> None:
    """A failed cell as it happens: its label and the error (a bug's whole traceback)."""
    if not failure.expected:
        stderr.print(escape(failure.details), highlight=False)
    stderr.print(f"[bold red]failed:[/bold red] {escape(f'{cell.label}: {failure.error}')}")


def stop_if_failed(failed: list) -> None:
    """Exit 1 when cells failed: they are not in the store, and the next run retries them."""
    if failed:
        stderr.print(
            f"[bold red]{len(failed)} cell(s) failed[/bold red] (not stored; running the same "
            "command again retries them)"
        )
        raise typer.Exit(1)


@app.command()
def report(
    db: Annotated[Path, typer.Argument(metavar="RESULTS.db", help="Results store to report on.")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Folder for report.md, report.html and the plots."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an earlier report in --out.")] = False,
) -> None:
    """TPR, FPR (never-published keys, clean models) with exact 95% intervals, the null
    audits' false-positive rate per method and access, QQ plots, accuracy. The store is
    only read, and refused if any row was edited."""
    from ..evaluate import open_store, summarise
    from ..evaluate.render import check_report_folder, write_report
    from ..evaluate.report import null_entries

    if out is not None:
        check_report_folder(out, force, protect=[db])
    with open_store(db) as store:
        summary = summarise(store)
        null = null_entries(store) if out is not None else []
    if out is not None:
        written = write_report(summary, null, out, force=force)
        stderr.print(f"wrote {len(written)} files to {out} (report.md, report.html)")
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    elif out is None:
        print_summary(summary)


def print_summary(summary: dict) -> None:
    """The pooled rates (k/n; the intervals are in the report files) and the null."""
    table = Table(title="TPR and FPR pooled over seeds (k/n flagged, exact 95% interval)")
    for name in (
        "method / recipe / countermeasure",
        "access",
        "TPR",
        "FPR never",
        "FPR clean",
        "accuracy",
    ):
        table.add_column(name)
    for e in summary["pooled"]:
        acc = "-" if e["marked_accuracy"] is None else f"{e['marked_accuracy']:.3f}"
        table.add_row(
            f"{e['method']} / {e['recipe']} / {e['countermeasure']}",
            e["access"],
            *(_count(e, name) for name in ("tpr", "fpr_never_published", "fpr_clean")),
            f"{acc} / {e['clean_accuracy']:.3f}",
        )
    stdout.print(table)
    null = Table(title="Null audits: keys whose data the model never saw")
    for name in ("method", "access", "FPR [95% CI]", "alpha", "p(FPR > alpha)"):
        null.add_column(name)
    for e in summary["null"]:
        ci = f"[{e['fpr_ci'][0]:.3f}, {e['fpr_ci'][1]:.3f}]"
        null.add_row(
            e["method"],
            e["access"],
            f"{e['fpr']:.3f} of {e['n']} {ci}",
            f"{e['alpha']:g}",
            f"{e['p_fpr_above_alpha']:.3g}",
        )
    stdout.print(null)
    for e in summary.get("fpr_above_alpha", []):
        seed = "pooled" if e["seed"] is None else f"seed {e['seed']}"
        stderr.print(
            f"{e['rate']} of {e['method']} / {e['recipe']} / {e['countermeasure']} "
            f"({seed}, {e['access']}): {e['fpr']:.3f}, interval [{e['ci'][0]:.3f}, "
            f"{e['ci'][1]:.3f}] lies wholly above alpha = {e['alpha']:g}: an audit is wrong",
            style="bold red",
            markup=False,
            highlight=False,
        )


def _count(entry: dict, name: str) -> str:
    n = entry[
        {"tpr": "n_members", "fpr_never_published": "n_never_published", "fpr_clean": "n_clean"}[
            name
        ]
    ]
    if not n:
        return "-"
    low, high = entry[f"{name}_ci"]
    return f"{round(entry[name] * n)}/{n} [{low:.2f}, {high:.2f}]"


def print_details(summary: dict) -> None:
    """The papers' research metrics and the watermark metrics, where cells have them."""
    research = [e for e in summary["cells"] if e.get("research")]
    if research:
        table = Table(title="Members against never-published owners on the victim")
        for name in ("method / recipe / seed", "inference", "AUC", "FPR@100%TPR"):
            table.add_column(name)
        for e in research:
            for kind, m in e["research"].items():
                table.add_row(
                    f"{e['method']} / {e['recipe']} / {e['seed']}",
                    kind.replace("_", "-"),
                    f"{m['auc']:.3f}",
                    f"{m['fpr_at_100_tpr']:.3f}",
                )
        stdout.print(table)
    marked = {
        (e["method"], e["recipe"], e["seed"]): e["watermark_metrics"]
        for e in summary["cells"]
        if e.get("watermark_metrics")
    }
    if marked:
        table = Table(title="Watermark metrics of each victim (test images, its trigger)")
        names = ("BA", "ASR-A", "ASR-C", "D_p", "D_s", "D_c")
        for name in ("method / recipe / seed", *names):
            table.add_column(name)
        for (method, recipe, seed), m in marked.items():
            table.add_row(f"{method} / {recipe} / {seed}", *(f"{m[n]:.3f}" for n in names))
        stdout.print(table)
