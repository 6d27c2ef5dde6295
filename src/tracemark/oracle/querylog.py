"""The query log: every image asked of a remote model and its answer, appended as it comes.

A JSONL file. Line 1 is a header naming the endpoint; every other line is one answered
image::

    {"sha256": "...", "time": "2026-11-23T23:41:07.5+00:00", "answer": {"output": [...]}}

``answer`` holds what the model said, as it said it: ``{"output": [C scores]}`` for a
full score vector (probabilities or logits), ``{"labels": [...], "scores": [...]}`` for
a top-k list (``scores`` absent when the endpoint reveals none; one label = label-only).
Floats are written with Python's shortest round-trip repr, so re-reading gives the same
bits and a replayed audit the same p-value.

Lines are flushed and fsynced batch by batch, so an interrupted audit keeps every
answer it received; a half-written last line (the process died mid-write) is cut off
when the log is reopened. Each image appears at most once: an answered image is never
sent again.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import TracemarkError

__all__ = ["LOG_FORMAT", "QueryLog", "check_answer"]

LOG_FORMAT = "tracemark-query-log"
LOG_VERSION = 1

# Header fields that must match when a log is reused: answers from another model or
# protocol would silently mix two models' behaviour into one verdict.
IDENTITY_FIELDS = ("endpoint", "protocol", "model_name")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_answer(answer: object, where: str) -> dict[str, Any]:
    """Validate one stored answer's shape (not its values' meaning)."""
    if not isinstance(answer, dict):
        raise TracemarkError(f"{where}: an answer must be a JSON object, got {answer!r:.80}")
    if "output" in answer:
        out = answer["output"]
        if not isinstance(out, list) or not all(_is_number(v) for v in out):
            raise TracemarkError(f"{where}: 'output' must be a list of numbers")
        return answer
    labels = answer.get("labels")
    if not isinstance(labels, list) or not labels or not all(_is_label(v) for v in labels):
        raise TracemarkError(
            f"{where}: an answer needs 'output' (scores) or 'labels' (a non-empty list of ints)"
        )
    scores = answer.get("scores")
    if scores is not None and (
        not isinstance(scores, list)
        or len(scores) != len(labels)
        or not all(_is_number(v) for v in scores)
    ):
        raise TracemarkError(f"{where}: 'scores' must be numbers, one per label")
    return answer


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_label(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class QueryLog:
    """An append-only JSONL log of answered images, readable as a cache.

    ``QueryLog(path, header)`` creates the file or reopens it; reopening checks that
    ``header``'s endpoint, protocol and model name match the ones it was written for.
    ``QueryLog.read(path)`` opens a log for replay only (nothing is written).
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.answers: dict[str, dict[str, Any]] = {}
        self.header: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._writable = header is not None
        if self.path.exists():
            self._load(repair=self._writable)
            if header is not None:
                self._check_identity(header)
        elif header is None:
            raise TracemarkError(f"query log {self.path} does not exist")
        else:
            self.header = {
                "format": LOG_FORMAT,
                "version": LOG_VERSION,
                "created": now_iso(),
                **header,
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "x", encoding="utf-8") as fh:
                fh.write(json.dumps(self.header) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    @classmethod
    def read(cls, path: str | os.PathLike) -> QueryLog:
        """Open an existing log read-only (for replay)."""
        return cls(path, None)

    def __len__(self) -> int:
        return len(self.answers)

    def get(self, sha256: str) -> dict[str, Any] | None:
        return self.answers.get(sha256)

    def append(self, records: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Append (sha256, request time, answer) records and make them durable."""
        if not self._writable:
            raise TracemarkError(f"query log {self.path} was opened read-only")
        lines, new = [], {}
        with self._lock:
            for sha, when, answer in records:
                if sha in self.answers or sha in new:
                    continue  # never record an image twice
                new[sha] = answer
                lines.append(json.dumps({"sha256": sha, "time": when, "answer": answer}) + "\n")
            if not lines:
                return
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
            # Only once they are on disk: a Ctrl-C before this point leaves them unmarked,
            # so the caller's retry writes them (a repeated identical line loads fine).
            self.answers.update(new)

    def _load(self, repair: bool) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise TracemarkError(f"cannot read query log {self.path}: {exc}") from None
        complete, _, partial = raw.rpartition(b"\n")
        if partial:
            if repair:  # a half-written record from a process killed mid-write
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(complete) + 1 if complete else 0)
            warnings.warn(
                f"query log {self.path}: dropped an incomplete last line ({len(partial)} bytes)",
                stacklevel=3,
            )
        lines = complete.decode("utf-8", errors="replace").split("\n") if complete else []
        if not lines:
            raise TracemarkError(f"query log {self.path} is empty (no header line)")
        try:
            self.header = json.loads(lines[0])
        except json.JSONDecodeError:
            self.header = {}
        if self.header.get("format") != LOG_FORMAT:
            raise TracemarkError(f"{self.path} is not a tracemark query log (bad header line)")
        if self.header.get("version") != LOG_VERSION:
            raise TracemarkError(
                f"query log {self.path} has version {self.header.get('version')}; this "
                f"tracemark reads version {LOG_VERSION}"
            )
        for number, line in enumerate(lines[1:], start=2):
            where = f"query log {self.path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TracemarkError(f"{where} is not valid JSON: {exc}") from None
            sha = record.get("sha256") if isinstance(record, dict) else None
            if not isinstance(sha, str) or len(sha) != 64:
                raise TracemarkError(f"{where} has no valid 'sha256'")
            answer = check_answer(record.get("answer"), where)
            if sha in self.answers and self.answers[sha] != answer:
                raise TracemarkError(
                    f"{where} answers image {sha[:12]}... differently from an earlier line; "
                    "the log has been edited or mixes two models"
                )
            self.answers[sha] = answer

    def _check_identity(self, header: Mapping[str, Any]) -> None:
        for field in IDENTITY_FIELDS:
            old, new = self.header.get(field), header.get(field)
            if old != new:
                raise TracemarkError(
                    f"query log {self.path} was written for {field} {old!r}, not {new!r}; "
                    "answers from another endpoint must not be mixed into this audit. "
                    "Use a new --query-log file"
                )
