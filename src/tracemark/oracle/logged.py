"""Oracles whose answers arrive per image, are cached by image hash and can be logged.

An HTTP endpoint answers with whatever it reveals: a score vector, a top-k list or a
label. :class:`LoggedOracle` turns those per-image answers into one :class:`Response`,
decides the access mode from them, never asks for an image it already has an answer
for (from this run or from a query log), and charges the budget only for images
actually sent. :class:`ReplayOracle` answers from a log alone, so a third party can
recompute a verdict without the model.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import BudgetExceededError, TracemarkError
from .base import ModelOracle, check_images
from .image_hash import image_hashes
from .querylog import QueryLog, now_iso
from .response import Response
from .wire import check_batches

__all__ = ["LoggedOracle", "ReplayOracle", "answers_to_response"]


class LoggedOracle(ModelOracle):
    """Base for oracles that fetch per-image answers (subclasses implement ``_fetch``).

    ``queries`` counts images sent to the model (what a paid API bills); ``from_log``
    counts images answered from the log or from earlier in this run instead.
    """

    def __init__(self, *, log: QueryLog | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if log is not None:
            check_batches(log)  # the bytes a binary answer kept must give its answers
        self.log = log
        self._cache: dict[str, dict[str, Any]] = dict(log.answers) if log is not None else {}
        self.from_log = 0
        self.access_seen: str | None = None

    def _predict(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - not used
        raise NotImplementedError("LoggedOracle answers through query()")

    def _fetch(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Ask the model about ``images`` (each a new query); one answer per image."""
        raise NotImplementedError

    def _fetch_missing(
        self,
        images: np.ndarray,
        hashes: list[str],
        batches: list[tuple[int, int]] | None = None,
    ) -> None:
        """Fetch and record answers for the distinct images ``hashes`` names (in order);
        ``batches``, where given, the (start, end) of each request (remote oracles)."""
        answers = self._fetch(images)
        self._record(hashes, now_iso(), answers)

    def _record(
        self,
        hashes: list[str],
        when: str,
        answers: list[dict[str, Any]],
        batch: dict[str, Any] | None = None,
    ) -> None:
        """Keep a batch's answers and log them (with ``batch``, the binary answer they
        were decoded from: see :meth:`.querylog.QueryLog.append`)."""
        if len(answers) != len(hashes):
            raise TracemarkError(
                f"the endpoint answered {len(answers)} images for a batch of {len(hashes)}"
            )
        self._queries += len(hashes)
        for sha, answer in zip(hashes, answers, strict=True):
            self._cache[sha] = answer
        if self.log is not None:
            self.log.append(
                ((sha, when, a) for sha, a in zip(hashes, answers, strict=True)), batch=batch
            )

    @property
    def answers_on_hand(self) -> int:
        """Distinct images already answered (this run or the query log): free to ask again."""
        return len(self._cache)

    def _ask(
        self,
        images: np.ndarray,
        hashes: list[str],
        batches: list[tuple[int, int]] | None = None,
    ) -> None:
        """Fetch the images of ``hashes`` never answered before (each distinct one once),
        in ``batches`` when every one of them is new."""
        n = len(hashes)
        missing: dict[str, int] = {}
        for i, sha in enumerate(hashes):
            if sha not in self._cache and sha not in missing:
                missing[sha] = i
        self.from_log += sum(sha not in missing for sha in hashes)
        if missing:
            if self.budget is not None and self._queries + len(missing) > self.budget:
                raise BudgetExceededError(
                    f"query budget exceeded: {self._queries} of {self.budget} queries used, "
                    f"and {len(missing)} new images asked ({self.budget - self._queries} "
                    "left). Nothing was sent; raise the budget or query fewer images"
                )
            at = list(missing.values())
            if len(at) == n:  # all new and distinct (a fresh audit's usual case): no copy
                self._fetch_missing(images, list(missing), batches)
            else:
                self._fetch_missing(images[at], list(missing))

    def _hash_windows(self, images: np.ndarray) -> list[list[tuple[int, int]]] | None:
        """The query's requests, (start, end) each, in windows: each window is hashed
        while the one before is answered. None here (hash everything first); remote
        oracles, whose answers take longer than hashing, give windows."""
        return None

    def query(self, images: np.ndarray) -> Response:
        """Answer from the cache where possible; send only images never answered before."""
        images = check_images(images)
        n = images.shape[0]
        if n == 0:
            c = self.num_classes or 0
            return Response.from_probabilities(np.zeros((0, c)), c)
        windows = self._hash_windows(images)
        if not windows or (self.budget is not None and self._queries + n > self.budget):
            # A query that might overrun the budget is checked whole before anything is sent.
            hashes = image_hashes(images)
            self._ask(images, hashes)
        else:
            hashes = []
            spans = [(w[0][0], w[-1][1]) for w in windows]
            with ThreadPoolExecutor(1, thread_name_prefix="tracemark-hash") as hasher:
                ahead = hasher.submit(image_hashes, images[slice(*spans[0])])
                for k, (a, b) in enumerate(spans):
                    part = ahead.result()
                    if k + 1 < len(spans):  # hash the next window while this one is answered
                        ahead = hasher.submit(image_hashes, images[slice(*spans[k + 1])])
                    self._ask(images[a:b], part, [(s - a, e - a) for s, e in windows[k]])
                    hashes += part
        response = answers_to_response(
            [self._cache[sha] for sha in hashes], self.num_classes, self._to_probabilities
        )
        if self._kind == "logits" and response.mode == "probabilities":
            response = dataclasses.replace(response, softmax_applied=True)
        if self.num_classes is None:
            self.num_classes = response.num_classes
        self.access_seen = response.mode
        return response


def answers_to_response(
    answers: list[dict[str, Any]], num_classes: int | None, to_probs
) -> Response:
    """One Response from per-image answers, all of one kind (the access mode they reveal).

    ``to_probs(raw, n)`` checks and normalises a score matrix (probabilities or logits).
    A top-k list with scores that covers every class is full access.
    """
    n = len(answers)
    if all("output" in a for a in answers):
        widths = {len(a["output"]) for a in answers}
        if len(widths) != 1:
            raise TracemarkError(
                f"the endpoint answered with score vectors of different lengths {sorted(widths)}"
            )
        raw = np.array([a["output"] for a in answers], dtype=np.float64)
        probs = to_probs(raw, n)
        return Response.from_probabilities(probs, probs.shape[1])
    if any("output" in a for a in answers):
        raise TracemarkError(
            "the endpoint answered some images with scores and others with labels only; "
            "an audit needs one kind of answer"
        )
    ks = {len(a["labels"]) for a in answers}
    if len(ks) != 1:
        raise TracemarkError(f"the endpoint answered top-k lists of different lengths {sorted(ks)}")
    k = ks.pop()
    labels = np.array([a["labels"] for a in answers], dtype=np.int64)
    has_scores = all(a.get("scores") is not None for a in answers)
    scores = np.array([a["scores"] for a in answers], dtype=np.float64) if has_scores else None
    if num_classes is None:
        raise TracemarkError(
            "the endpoint reveals only labels, so the number of classes is unknown: pass "
            "--num-classes (or --class-names)"
        )
    if labels.max() >= num_classes:
        raise TracemarkError(
            f"the endpoint answered label {int(labels.max())}, but the model has "
            f"{num_classes} classes (--num-classes)"
        )
    if scores is not None and k == num_classes:
        full = np.zeros((n, num_classes))
        np.put_along_axis(full, labels, scores, axis=1)
        return Response.from_probabilities(to_probs(full, n), num_classes)
    if scores is not None and not np.isfinite(scores).all():
        raise TracemarkError("the endpoint answered non-finite scores")
    return Response("label" if k == 1 else "topk", labels, None, scores, num_classes)


class ReplayOracle(LoggedOracle):
    """Answers only from a query log: recompute an audit's verdict without the model.

    ``endpoint`` and ``model_name``, when given, must be the ones the log's header
    names: a log of another model must not pass for this one's. :meth:`provenance`
    says what the log claims to record, for the verdict.
    """

    def __init__(
        self,
        log: str | os.PathLike | QueryLog,
        *,
        endpoint: str | None = None,
        model_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        log = log if isinstance(log, QueryLog) else QueryLog.read(log)
        header = log.header
        recorded = str(header.get("endpoint") or "").rstrip("/")
        if not recorded:
            raise TracemarkError(f"query log {log.path} names no endpoint in its header")
        if endpoint is not None:
            # a v2 model's address may be given whole: BASE/v2/models/NAME
            names = {recorded}
            if header.get("model_name"):
                names.add(f"{recorded}/v2/models/{header['model_name']}")
            if endpoint.rstrip("/") not in names:
                raise TracemarkError(
                    f"query log {log.path} records endpoint {recorded!r}, not {endpoint!r}: "
                    "it is the log of another model"
                )
        if model_name is not None and header.get("model_name") != model_name:
            raise TracemarkError(
                f"query log {log.path} records model {header.get('model_name')!r}, not "
                f"{model_name!r}: it is the log of another model"
            )
        super().__init__(log=log, **kwargs)

    def provenance(self) -> str:
        """One line: which model the log says answered, when, and whether it is intact."""
        h = self.log.header
        model = f", model {h['model_name']!r}" if h.get("model_name") else ""
        chain = (
            "hash chain intact"
            if self.log.chained
            else "no hash chain (a version-1 log): edits to it cannot be detected"
        )
        binary = (
            f", {len(self.log.batches)} binary answers kept as sent and decoded again"
            if self.log.batches
            else ""
        )
        return (
            f"answers replayed from query log {self.log.path}: recorded from {h['endpoint']}"
            f"{model} ({h.get('protocol')}), created {h.get('created')}; {len(self.log)} "
            f"answers, {chain}{binary}"
        )

    def _fetch(self, images: np.ndarray) -> list[dict[str, Any]]:
        raise TracemarkError(
            f"the query log {self.log.path} has no answer for {len(images)} of the images this "
            "audit asks about: replay needs the same key, images and options as the audit that "
            "wrote the log"
        )

    def _record(self, hashes, when, answers, batch=None) -> None:  # pragma: no cover
        raise AssertionError("a replay never records")
