"""The results store: one SQLite file (WAL mode) per experiment run.

A cell's rows are written in one transaction when the cell finishes, so a run killed at
any moment leaves only finished cells, and re-running the spec computes exactly the
missing ones. Cells are keyed by a hash of their spec and the tracemark version
(:attr:`~tracemark.evaluate.cells.Cell.cell_id`). Only the driver writes; workers return
their results to it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import TracemarkError
from .run import CellResult

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    started TEXT NOT NULL, finished TEXT, spec_name TEXT NOT NULL, spec TEXT NOT NULL,
    cells INTEGER NOT NULL, computed INTEGER, seconds REAL, tracemark_version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, method_name TEXT NOT NULL, method TEXT NOT NULL,
    recipe TEXT NOT NULL, countermeasure TEXT NOT NULL, seed INTEGER NOT NULL,
    alpha REAL NOT NULL, marked_accuracy REAL, clean_accuracy REAL NOT NULL,
    metrics TEXT NOT NULL, timings TEXT NOT NULL, spec TEXT NOT NULL,
    tracemark_version TEXT NOT NULL, finished TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audits (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id), access TEXT NOT NULL,
    model TEXT NOT NULL, owner INTEGER NOT NULL, member INTEGER NOT NULL,
    p_value REAL NOT NULL, decision INTEGER NOT NULL, queries INTEGER NOT NULL,
    effect REAL NOT NULL, label INTEGER, evidence BLOB NOT NULL,
    PRIMARY KEY (cell_id, access, model, owner)
);
"""
# Columns whose values depend on the machine's clock, not on the experiment.
TIMING_COLUMNS = frozenset({"timings", "finished"})


class Store:
    """The results of a run, in ``path`` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise TracemarkError(f"results store {self.path} is not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._db:
                self._db.executescript(SCHEMA)
                self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise TracemarkError(f"{self.path} is not a tracemark results store: {exc}") from None

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise TracemarkError(
                f"{self.path} has results schema {row[0]}; this tracemark reads {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def finished(self) -> set[str]:
        """The ids of the cells already in the store."""
        return {r[0] for r in self._db.execute("SELECT cell_id FROM cells")}

    def add(self, result: CellResult, alpha: float, spec: dict[str, Any]) -> None:
        """Write one finished cell and all its audits, in one transaction."""
        with self._db:
            self._db.execute(
                "INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    result.cell_id,
                    result.method_name,
                    result.method,
                    result.recipe,
                    result.countermeasure,
                    result.seed,
                    alpha,
                    result.marked_accuracy,
                    result.clean_accuracy,
                    json.dumps(result.metrics, sort_keys=True),
                    json.dumps(result.timings, sort_keys=True),
                    json.dumps(spec, sort_keys=True),
                    __version__,
                    _now(),
                ),
            )
            self._db.executemany(
                "INSERT INTO audits VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        result.cell_id,
                        a.access,
                        a.model,
                        a.owner,
                        int(a.member),
                        a.p_value,
                        int(a.decision),
                        a.queries,
                        a.effect,
                        a.label,
                        a.evidence,
                    )
                    for a in result.audits
                ],
            )

    @contextmanager
    def run(self, spec_name: str, spec: dict[str, Any], cells: int) -> Iterator[dict]:
        """Record a run of a spec: its start now, its end (and what it computed) after."""
        cur = self._db.execute(
            "INSERT INTO runs (started, spec_name, spec, cells, tracemark_version) "
            "VALUES (?,?,?,?,?)",
            (_now(), spec_name, json.dumps(spec, sort_keys=True), cells, __version__),
        )
        self._db.commit()
        record: dict = {"computed": 0, "seconds": 0.0}
        try:
            yield record
        finally:
            with self._db:
                self._db.execute(
                    "UPDATE runs SET finished = ?, computed = ?, seconds = ? WHERE rowid = ?",
                    (_now(), record["computed"], record["seconds"], cur.lastrowid),
                )

    # ------------------------------------------------------------------ reading

    def cells(self) -> list[dict[str, Any]]:
        """Every finished cell, in a stable order."""
        cur = self._db.execute(
            "SELECT * FROM cells ORDER BY method_name, recipe, countermeasure, seed"
        )
        return [_decode(dict(zip(_names(cur), row, strict=True))) for row in cur]

    def audits(self, cell_id: str | None = None) -> list[dict[str, Any]]:
        """Every audit (of one cell, or of all), evidence left compressed."""
        sql = "SELECT * FROM audits"
        args: tuple = ()
        if cell_id is not None:
            sql, args = sql + " WHERE cell_id = ?", (cell_id,)
        cur = self._db.execute(sql + " ORDER BY cell_id, model, access, owner", args)
        return [dict(zip(_names(cur), row, strict=True)) for row in cur]

    def runs(self) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT * FROM runs ORDER BY rowid")
        return [dict(zip(_names(cur), row, strict=True)) for row in cur]

    def rows(self, cell_ids: set[str] | None = None, timings: bool = False) -> Iterable[tuple]:
        """Every cell and audit row (of ``cell_ids``, or all) as tuples, for comparing two
        stores (timings left out unless asked for)."""
        for cell in self.cells():
            if cell_ids is None or cell["cell_id"] in cell_ids:
                kept = {k: v for k, v in cell.items() if timings or k not in TIMING_COLUMNS}
                yield tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in kept.items()))
        for audit in self.audits():
            if cell_ids is None or audit["cell_id"] in cell_ids:
                yield tuple(sorted(audit.items()))


def _names(cursor: sqlite3.Cursor) -> list[str]:
    return [d[0] for d in cursor.description]


def _decode(cell: dict[str, Any]) -> dict[str, Any]:
    for name in ("metrics", "timings", "spec"):
        cell[name] = json.loads(cell[name])
    return cell


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_store(path: str | Path) -> Store:
    """An existing results store (for reports): refuses a path that does not exist."""
    if not Path(path).is_file():
        raise TracemarkError(f"no results store at {path}; run `tracemark evaluate SPEC` first")
    return Store(path)
