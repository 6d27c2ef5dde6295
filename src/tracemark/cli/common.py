"""What several verbs share: parsers, the report flags, evidence files, and model traffic."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ..errors import TracemarkError
from ..options import option
from ..progress import stderr
from ..text import printable
from .app import stdout


def parse_params(items: list[str]) -> dict[str, Any]:
    """``--param NAME=VALUE`` items as a dict (values parsed as JSON where they are)."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise TracemarkError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value  # plain strings need no quotes
    return params


def parse_label(label: str | None, class_names: Sequence[str] | None) -> int | None:
    """``--label``: a class index, or one of ``--class-names``."""
    if label is None:
        return None
    if label.isdigit():
        return int(label)
    if class_names and label in class_names:
        return list(class_names).index(label)
    raise TracemarkError(f"--label {label!r} is not a class index or one of --class-names")


def parse_classes(text: str, what: str = "--labels") -> list[int]:
    """Comma-separated class indices."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise TracemarkError(f"{what} takes comma-separated class indices, got {text!r}") from None


@dataclass(frozen=True)
class Report:
    """How a verb reports a verdict: a summary or JSON, the evidence file, progress bars."""

    as_json: bool = option(False, "Print the verdict as JSON.", "--json")
    evidence: Path | None = option(None, "Also write the full verdict with raw scores here.")
    report: Path | None = option(
        None, "Also write the verdict as a page a person can read (self-contained HTML)."
    )
    force: bool = option(False, "Overwrite an existing --evidence or --report file.")
    quiet: bool = option(False, "No progress bars.")


def check_evidence(path: Path | None, force: bool, protect: list, page: Path | None = None) -> None:
    """Refuse an --evidence or --report path that would replace a file (without --force)
    or land among the originals, before any query is spent."""
    from ..fsutil import check_output

    protect = [p for p in protect if p is not None and Path(p).exists()]
    for where, what in ((path, "evidence file"), (page, "report page")):
        if where is not None:
            check_output(where, force=force, protect=protect, what=what)
    if path is not None and page is not None and Path(path).resolve() == Path(page).resolve():
        from ..errors import TracemarkError

        raise TracemarkError("--evidence and --report name the same file")


def report_verdict(verdict, report: Report, protect: list) -> None:
    """Write the evidence file (atomically, the full verdict with raw scores) and print
    the verdict: a summary for a person, or JSON without the raw scores."""
    if report.evidence is not None:
        from ..fsutil import atomic_write_text

        protect = [p for p in protect if p is not None and Path(p).exists()]
        text = verdict.model_dump_json(indent=2) + "\n"
        atomic_write_text(report.evidence, text, force=report.force, protect=protect)
    if report.report is not None:
        from ..audit_report import write_audit_report

        protect = [p for p in protect if p is not None and Path(p).exists()]
        command = ["tracemark", *sys.argv[1:]]
        write_audit_report(verdict, report.report, command, report.force, protect)
    if report.as_json:
        sys.stdout.write(verdict.model_dump_json(exclude={"evidence"}, indent=2) + "\n")
    else:
        stdout.print(verdict.summary())


@contextlib.contextmanager
def querying(oracle, query_log: Path | None = None) -> Iterator[None]:
    """Run an audit through ``oracle``: Ctrl-C exits 130 (saying how to resume from the
    query log); afterwards the traffic is reported and the connection closed."""
    try:
        yield
    except KeyboardInterrupt:
        if query_log is not None:
            stderr.print(
                f"interrupted: every answer received is in {query_log}; run the same command "
                "again to resume without repeating a query"
            )
        raise typer.Exit(130) from None
    finally:
        report_traffic(oracle)
        getattr(oracle, "close", lambda: None)()


def report_traffic(oracle) -> None:
    """One stderr line on what an HTTP audit cost (nothing for local models)."""
    from ..oracle import HttpOracle, ReplayOracle

    if isinstance(oracle, ReplayOracle):
        stderr.print(
            escape(printable(f"replayed {oracle.from_log} answers; no query was sent. "))
            + escape(printable(oracle.provenance()))
        )
    elif isinstance(oracle, HttpOracle):
        failures = ", ".join(f"{n}× {why}" for why, n in oracle.failures.most_common())
        log = f"; query log {oracle.log.path}" if oracle.log is not None else ""
        stderr.print(
            f"{oracle.url}: {oracle.queries} images sent in {oracle.requests} requests "
            f"({oracle.wire} tensors) "
            f"({oracle.retried} retried{': ' + failures if failures else ''}), "
            f"{oracle.from_log} answered from the log or earlier in the run; access seen: "
            f"{oracle.access_seen}{log}"
        )
