"""The results store: one SQLite file (WAL mode) per experiment run, checked on every read.

A cell's rows are written in one transaction when the cell finishes, so a run killed at
any moment leaves only finished cells, and re-running the spec computes exactly the
missing ones. Cells are keyed by a hash of their spec and the tracemark version
(:attr:`~tracemark.evaluate.cells.Cell.cell_id`). Only the driver writes; workers return
their results to it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import TracemarkError
from ..fsutil import check_output
from .run import CellResult

SCHEMA_VERSION = 2  # 2: a SHA-256 digest per cell (cell_digests)
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
CREATE TABLE IF NOT EXISTS cell_digests (
    cell_id TEXT PRIMARY KEY REFERENCES cells(cell_id), sha256 TEXT NOT NULL
);
"""
TABLES = frozenset({"meta", "runs", "cells", "audits"})  # every schema has these
# Columns whose values depend on the machine's clock, not on the experiment.
TIMING_COLUMNS = frozenset({"timings", "finished"})
DIGEST_DOMAIN = b"tracemark/results-cell/v1\x00"


class Store:
    """The results of a run, in ``path``.

    Writable (``evaluate``): created when missing or empty; an existing file is used only
    if it already is a tracemark results store (checked read-only first, so another
    tool's SQLite file is never changed), and one run at a time holds it (a lock file
    beside it). ``read_only`` (``report``): opened without writing a byte, and every row
    validated against its cell's digest before anything is reported.
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = None
        if read_only:
            self._db = _connect_read_only(self.path)
            self._check_tables()
            self.validate()
            return
        check_output(self.path, force=True, what="results store")
        if self.path.exists() and self.path.stat().st_size > 0:
            self._recognise()  # a tracemark store, or refused untouched
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _hold_lock(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._db:
                self._db.executescript(SCHEMA)
                self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise TracemarkError(f"{self.path} is not a tracemark results store: {exc}") from None

    def _recognise(self) -> None:
        """Refuse an existing SQLite file that is not a tracemark store, changing nothing."""
        db = _connect_read_only(self.path)
        try:
            tables = _tables(db)
            schema = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        except sqlite3.DatabaseError:
            schema = None
        finally:
            db.close()
        if schema is None or not tables >= TABLES:
            raise TracemarkError(
                f"{self.path} is an SQLite file but not a tracemark results store (or a damaged "
                "one); nothing was changed. Give a new file name for --db"
            )

    def _check_tables(self) -> None:
        try:
            tables = _tables(self._db)
        except sqlite3.DatabaseError as exc:
            raise TracemarkError(f"{self.path} is not a tracemark results store: {exc}") from None
        missing = sorted(TABLES - tables)
        if missing:
            raise TracemarkError(
                f"{self.path} is not a tracemark results store (or a damaged one): no table "
                f"{', '.join(missing)}"
            )
        row = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is None or row[0] not in (str(SCHEMA_VERSION), "1"):
            raise TracemarkError(f"{self.path} has results schema {row and row[0]!r}")
        if row[0] == "1" or "cell_digests" not in tables:
            raise TracemarkError(
                f"{self.path} was written by an older tracemark (results schema 1, without a "
                "digest per cell). Run `tracemark evaluate SPEC --db` on it once: that checks "
                "every row and adds the digests (it computes no cell already stored)"
            )

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] == "1":  # upgrade: check every row, then seal each cell with its digest
            self.validate(digests=False)
            for cell_id in self.finished():
                self._seal(cell_id)
            self._db.execute(
                "UPDATE meta SET value = ? WHERE name = 'schema'", (str(SCHEMA_VERSION),)
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise TracemarkError(
                f"{self.path} has results schema {row[0]}; this tracemark reads {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()  # releases the lock

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ checking

    def digest(self, cell_id: str) -> str:
        """SHA-256 over a cell's row and all its audits' rows, as stored."""
        cell = self._db.execute("SELECT * FROM cells WHERE cell_id = ?", (cell_id,)).fetchall()
        audits = self._db.execute(
            "SELECT * FROM audits WHERE cell_id = ? ORDER BY access, model, owner", (cell_id,)
        ).fetchall()
        body = json.dumps([[_plain(v) for v in r] for r in [*cell, *audits]], separators=(",", ":"))
        return hashlib.sha256(DIGEST_DOMAIN + body.encode()).hexdigest()

    def _seal(self, cell_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO cell_digests VALUES (?, ?)", (cell_id, self.digest(cell_id))
        )

    def validate(self, digests: bool = True) -> None:
        """Refuse a store whose rows were edited: every value typed and in range, every
        decision equal to ``p_value <= alpha`` (recomputed), no audit without its cell,
        and (``digests``) every cell matching the digest written with it."""
        cells = {}
        for row in self._db.execute("SELECT cell_id, alpha, metrics, timings, spec FROM cells"):
            cell_id, alpha, *texts = row
            where = f"{self.path}: cell {str(cell_id)[:12]}"
            if not isinstance(alpha, float) or not 0 < alpha < 1:
                raise TracemarkError(f"{where} has alpha {alpha!r}; the store was edited")
            decoded = []
            for name, text in zip(("metrics", "timings", "spec"), texts, strict=True):
                try:
                    value = json.loads(text)
                except (TypeError, ValueError):
                    value = None
                if not isinstance(value, dict):
                    raise TracemarkError(
                        f"{where}: {name} is not a JSON object; the store is damaged"
                    )
                decoded.append(value)
            cells[cell_id] = (alpha, _paper_procedure(decoded[2]))
        rows = self._db.execute(
            "SELECT cell_id, access, model, owner, member, p_value, decision FROM audits"
        )
        for cell_id, access, model, owner, member, p, decision in rows:
            where = (
                f"{self.path}: audit of owner {owner!r} ({model}, {access}) in cell "
                f"{str(cell_id)[:12]}"
            )
            if cell_id not in cells:
                raise TracemarkError(f"{where} belongs to no cell; the store was edited")
            alpha, paper = cells[cell_id]
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise TracemarkError(f"{where} has p-value {p!r}; the store was edited")
            if decision not in (0, 1) or member not in (0, 1) or model not in ("marked", "clean"):
                raise TracemarkError(f"{where} has a damaged row; the store was edited")
            if not paper and bool(decision) != (p <= alpha):
                raise TracemarkError(
                    f"{where} decided {bool(decision)} with p-value {p} at alpha {alpha}; the "
                    "store was edited"
                )
        if not digests:
            return
        stored = dict(self._db.execute("SELECT cell_id, sha256 FROM cell_digests"))
        for cell_id in cells:
            if stored.get(cell_id) != self.digest(cell_id):
                raise TracemarkError(
                    f"{self.path}: cell {str(cell_id)[:12]} does not match the digest written "
                    "with it; its rows were edited after it was stored"
                )

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
            self._seal(result.cell_id)

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


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open an SQLite file without writing to it (nor creating it, nor changing its mode)."""
    if not path.exists():
        raise TracemarkError(f"no results store at {path}; run `tracemark evaluate SPEC` first")
    if not path.is_file():
        raise TracemarkError(f"results store {path} is not a regular file")
    if path.stat().st_size == 0:
        raise TracemarkError(f"{path} is empty: it is not a tracemark results store")
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        # A read-only WAL store in a folder we may not write to: read it as it is on disk.
        db = sqlite3.connect(f"{uri}?immutable=1", uri=True)
    except sqlite3.DatabaseError as exc:
        raise TracemarkError(f"{path} is not a tracemark results store: {exc}") from None
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise TracemarkError(f"{path} is not a tracemark results store: {exc}") from None
    return db


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _hold_lock(path: Path):
    """Hold ``PATH.lock`` for this run: a second run on the same store is refused at once."""
    import fcntl

    lock_path = path.with_name(path.name + ".lock")
    check_output(lock_path, force=True, what="lock file")
    fh = open(lock_path, "a")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise TracemarkError(
            f"another `tracemark evaluate` is writing to {path}; wait for it to finish, or give "
            "this run its own --db"
        ) from None
    return fh


def _plain(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def _paper_procedure(spec: dict[str, Any]) -> bool:
    """Whether a cell's audits decide by the isotope paper's vote (not by p <= alpha)."""
    method = spec.get("method", {})
    return any(
        isinstance(method.get(k), dict) and method[k].get("procedure") == "paper"
        for k in ("options", "never_options")
    )


def _names(cursor: sqlite3.Cursor) -> list[str]:
    return [d[0] for d in cursor.description]


def _decode(cell: dict[str, Any]) -> dict[str, Any]:
    for name in ("metrics", "timings", "spec"):
        cell[name] = json.loads(cell[name])
    return cell


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_store(path: str | Path) -> Store:
    """An existing results store, read-only and validated (for reports)."""
    return Store(path, read_only=True)
