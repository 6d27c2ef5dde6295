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
when the log is reopened, and only once line 1 has been checked to be a query log's
header (a file that is not a log is never modified). Each image appears at most once:
an answered image is never sent again.

Since version 2 every record also carries ``"prev"``, the SHA-256 of the line before
it, so an edited, deleted, inserted or reordered line breaks the chain and the log is
refused. The chain detects edits, not a forger who recomputes it: it is no signature.

Since version 3, an answer that came as raw tensor bytes (the v2 binary extension) is
kept whole, before its images' records, in a batch line::

    {"batch": {"images": [sha256, ...], "header_length": 97, "response_sha256": "...",
               "response": "<base64>"}, "time": ..., "prev": ...}

(a gRPC reply, since 0.6.0, has ``"wire": "grpc"`` in place of ``header_length``: its
bytes are a serialised ModelInferResponse).

The response's bytes must hash to ``response_sha256`` or the log is refused, and a
replay decodes them again and checks that they give the answers recorded
(:func:`tracemark.oracle.wire.check_batches`): what the model sent, byte for byte, is
part of the evidence.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import TracemarkError
from ..fsutil import check_output
from ..limits import MAX_CLASSES

__all__ = ["LOG_FORMAT", "QueryLog", "check_answer", "check_numbers"]

LOG_FORMAT = "tracemark-query-log"
LOG_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: no hash chain; 2: no batch lines (binary answers)
MAX_LABEL = MAX_CLASSES  # a bigger label is garbage (see tracemark.limits)
MAX_SCORE = 1e300  # finite, and far from overflowing when exponentiated as a logit

# Header fields that must match when a log is reused: answers from another model or
# protocol would silently mix two models' behaviour into one verdict.
IDENTITY_FIELDS = ("endpoint", "protocol", "model_name")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_answer(answer: object, where: str) -> dict[str, Any]:
    """Validate one answer, from a server or a log: the only gate answers pass.

    Scores must be JSON numbers (not booleans, not strings), finite and within
    ``MAX_SCORE``; labels non-negative integers below ``MAX_LABEL``. Returns the answer
    with its numbers as Python floats and ints.
    """
    if not isinstance(answer, dict):
        raise TracemarkError(f"{where}: an answer must be a JSON object, got {answer!r:.80}")
    if "output" in answer:
        out = answer["output"]
        if not isinstance(out, list) or not out:
            raise TracemarkError(f"{where}: 'output' must be a non-empty list of numbers")
        return {"output": check_numbers(out, where, "output")}
    labels = answer.get("labels")
    if not isinstance(labels, list) or not labels or not all(_is_label(v) for v in labels):
        raise TracemarkError(
            f"{where}: an answer needs 'output' (scores) or 'labels' (a non-empty list of "
            f"class indices, each below {MAX_LABEL})"
        )
    scores = answer.get("scores")
    if scores is None:
        return {"labels": [int(v) for v in labels]}
    if not isinstance(scores, list) or len(scores) != len(labels):
        raise TracemarkError(f"{where}: 'scores' must be numbers, one per label")
    return {"labels": [int(v) for v in labels], "scores": check_numbers(scores, where, "scores")}


def check_numbers(values: list, where: str, field: str) -> list[float]:
    """``values`` as floats, if each is a finite JSON number within ``MAX_SCORE``."""
    out = []
    for v in values:
        if not _is_number(v):
            raise TracemarkError(
                f"{where}: {field!r} must hold numbers, got {type(v).__name__} {v!r:.40}"
            )
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f) or abs(f) > MAX_SCORE:
            raise TracemarkError(f"{where}: {field!r} holds a non-finite or huge value {v!r:.40}")
        out.append(f)
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_label(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_LABEL


def _checked_batch(batch: object, where: str) -> dict[str, Any]:
    """A batch line's binary answer, its bytes decoded and checked against their hash."""
    if not isinstance(batch, dict):
        raise TracemarkError(f"{where}: a batch record must be an object")
    images = batch.get("images")
    if not (
        isinstance(images, list)
        and images
        and all(isinstance(h, str) and len(h) == 64 for h in images)
    ):
        raise TracemarkError(f"{where}: a batch record must list its images' SHA-256s")
    length = batch.get("header_length")
    grpc = batch.get("wire") == "grpc"  # a gRPC reply's bytes: no JSON header to frame
    if not grpc and (not isinstance(length, int) or isinstance(length, bool) or length <= 0):
        raise TracemarkError(f"{where}: a batch record needs a positive 'header_length'")
    try:
        raw = base64.b64decode(str(batch.get("response", "")), validate=True)
    except (binascii.Error, ValueError):
        raise TracemarkError(f"{where}: the batch's binary payload is not valid base64") from None
    if hashlib.sha256(raw).hexdigest() != batch.get("response_sha256"):
        raise TracemarkError(
            f"{where}: the batch's binary payload does not match its SHA-256: the bytes the "
            "model sent were altered, so the log cannot be trusted as a record of its answers"
        )
    return {**batch, "response": raw}


def line_hash(line: bytes) -> str:
    """The chain hash of one log line (its bytes without the newline)."""
    return hashlib.sha256(line).hexdigest()


class QueryLog:
    """An append-only JSONL log of answered images, readable as a cache.

    ``QueryLog(path, header)`` creates the file or reopens it; reopening checks that
    ``header``'s endpoint, protocol and model name match the ones it was written for.
    ``QueryLog.read(path)`` opens a log for replay only (nothing is written).
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.answers: dict[str, dict[str, Any]] = {}
        self.batches: list[dict[str, Any]] = []  # binary answers, their bytes whole
        self.header: dict[str, Any] = {}
        self.chained = True  # False for a version-1 log (no hash chain to check)
        self._lock = threading.Lock()
        self._writable = header is not None
        if self._writable:  # appending passes the guard of every write: no link, no device
            check_output(self.path, force=True, what="query log")
        if self.path.exists():
            self._load(repair=self._writable)
            if header is not None:
                self._check_identity(header)
                if not self.chained:
                    raise TracemarkError(
                        f"query log {self.path} was written by an older tracemark (version 1, "
                        "no hash chain); replay it with `tracemark replay`, and give a new "
                        "--query-log file to query the model again"
                    )
        elif header is None:
            raise TracemarkError(f"query log {self.path} does not exist")
        else:
            self.header = {
                "format": LOG_FORMAT,
                "version": LOG_VERSION,
                "created": now_iso(),
                **header,
            }
            line = json.dumps(self.header)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "x", encoding="utf-8") as fh:
                fh.write(line + "\n")
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

    def append(
        self,
        records: Iterable[tuple[str, str, dict[str, Any]]],
        batch: Mapping[str, Any] | None = None,
    ) -> None:
        """Append (sha256, request time, answer) records and make them durable.

        ``batch``: the binary answer they were decoded from (``response`` bytes and its
        ``header_length``), written first as a batch line (version 3 logs; an older log
        being resumed keeps its format and only the answers). What was sent is recorded
        by the images' own hashes: their exact float32 values.
        """
        if not self._writable:
            raise TracemarkError(f"query log {self.path} was opened read-only")
        with self._lock:
            new: dict[str, dict[str, Any]] = {}
            pending = []
            for sha, when, answer in records:
                if sha in self.answers or sha in new:
                    continue  # never record an image twice
                new[sha] = answer
                pending.append((sha, when, answer))
            if not pending:
                return
            # The chain starts from the line really last on disk: a Ctrl-C that landed
            # after an earlier write but before its bookkeeping must not break it.
            prev = self._tail_hash()
            lines = []
            if batch is not None and self.header.get("version", 0) >= 3:
                raw = bytes(batch["response"])
                # an HTTP binary body (its JSON header's length) or a gRPC reply's bytes
                framing = (
                    {"wire": "grpc"}
                    if batch.get("wire") == "grpc"
                    else {"header_length": batch.get("header_length")}
                )
                record = {
                    "batch": {
                        "images": [sha for sha, _, _ in pending],
                        **framing,
                        "response_sha256": hashlib.sha256(raw).hexdigest(),
                        "response": base64.b64encode(raw).decode("ascii"),
                    },
                    "time": pending[0][1],
                    "prev": prev,
                }
                line = json.dumps(record)
                prev = line_hash(line.encode("utf-8"))
                lines.append(line + "\n")
                new_batch = {**record["batch"], "response": raw}
            else:
                new_batch = None
            for sha, when, answer in pending:
                record = {"sha256": sha, "time": when, "answer": answer, "prev": prev}
                line = json.dumps(record)
                prev = line_hash(line.encode("utf-8"))
                lines.append(line + "\n")
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
            # Only once they are on disk: a Ctrl-C before this point leaves them unmarked,
            # so the caller's retry writes them (a repeated identical answer loads fine).
            self.answers.update(new)
            if new_batch is not None:
                self.batches.append(new_batch)

    def _tail_hash(self) -> str:
        """Chain hash of the file's last complete line, read from its end."""
        with open(self.path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            chunk, pos = b"", end
            while pos > 0:
                step = min(1 << 16, pos)
                pos -= step
                fh.seek(pos)
                chunk = fh.read(step) + chunk
                if chunk.count(b"\n") >= 2 or pos == 0:
                    break
        body = chunk[:-1] if chunk.endswith(b"\n") else chunk
        return line_hash(body.rpartition(b"\n")[2])

    def _load(self, repair: bool) -> None:
        if not self.path.is_file():
            raise TracemarkError(f"query log {self.path} is not a regular file")
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise TracemarkError(f"cannot read query log {self.path}: {exc}") from None
        complete, _, partial = raw.rpartition(b"\n")
        # Line 1 first: nothing is cut from a file until it is known to be a query log.
        first = raw.split(b"\n", 1)[0]
        try:
            self.header = json.loads(first.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.header = {}
        if not isinstance(self.header, dict) or self.header.get("format") != LOG_FORMAT:
            fix = (
                "Give a new file name for --query-log"
                if self._writable
                else "Give the log written by `tracemark audit --query-log`"
            )
            raise TracemarkError(
                f"{self.path} is not a tracemark query log (bad header line); nothing was "
                f"changed. {fix}"
            )
        version = self.header.get("version")
        if version not in READABLE_VERSIONS:
            raise TracemarkError(
                f"query log {self.path} has version {version!r}; this tracemark reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        self.chained = version >= 2
        if not complete:
            raise TracemarkError(f"query log {self.path} has no complete header line")
        if partial:
            if repair:  # a half-written record from a process killed mid-write
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(complete) + 1)
            warnings.warn(
                f"query log {self.path}: dropped an incomplete last line ({len(partial)} bytes)",
                stacklevel=3,
            )
        lines = complete.split(b"\n")
        prev = line_hash(lines[0])
        for number, line in enumerate(lines[1:], start=2):
            where = f"query log {self.path}, line {number}"
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise TracemarkError(f"{where} is not valid JSON: {exc}") from None
            if self.chained and isinstance(record, dict) and record.get("prev") != prev:
                raise TracemarkError(
                    f"{where} does not follow line {number - 1}: its hash chain is broken, so "
                    "the log was edited, or lines were removed, inserted or reordered. The "
                    "log cannot be trusted as a record of the model's answers"
                )
            prev = line_hash(line)
            if version >= 3 and isinstance(record, dict) and "batch" in record:
                self.batches.append(_checked_batch(record["batch"], where))
                continue
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
