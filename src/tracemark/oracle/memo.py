"""Memoised answers of one deterministic model, with counting views for each access mode.

An audit run once per access mode (full probabilities, top-K, label only) need not ask
the model again: :class:`AnswerCache` keeps each model answer by image fingerprint, and
each access mode gets its own counting view of it, wrapped with
:class:`~tracemark.oracle.TopK` or :class:`~tracemark.oracle.LabelOnly` as a real
deployment would be (:func:`restrict`). The wrappers see exactly the answers the model
gives, and their query counts are what a stand-alone audit with that access would spend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..errors import TracemarkError
from .base import Oracle, check_images
from .image_hash import image_hashes
from .response import Response

ACCESSES: tuple[str, ...] = ("probabilities", "topk", "label")


class KnownAnswers(Protocol):
    """Answers of the same model kept beyond one cache (e.g. on disk, across runs)."""

    def lookup(self, hashes: Sequence[str]) -> Response | None:
        """The answers to all of ``hashes``, or None unless every one is known."""

    def add(self, hashes: Sequence[str], response: Response) -> None:
        """Keep the model's answers to ``hashes``."""


class AnswerCache:
    """The answers of one deterministic model, memoised by image SHA-256.

    :meth:`view` gives oracles that answer from the memo and ask the model only about
    images it has not answered yet. ``model_queries`` counts the images that reached
    the model; each view counts every image asked of it. ``known``: answers the same
    model gave before (another cache's); a batch they cover is not sent to the model,
    and every answer the model gives is added to them.
    """

    def __init__(self, model: Oracle, known: KnownAnswers | None = None) -> None:
        self.model = model
        self.known = known
        self._rows: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
        self._form: tuple[str, int, bool, bool] | None = None  # mode, k, has probs, scores
        self._num_classes = 0
        self._softmax_applied = False

    @property
    def model_queries(self) -> int:
        return self.model.queries

    def view(self, passthrough: bool = False) -> CachedOracle:
        """A fresh counting oracle over the memo.

        ``passthrough``: send every batch to the model exactly as asked (and remember
        the answers), so this view's answers are bit for bit those of an uncached run;
        use it for the first access mode, and plain views for the others. A batch whose
        every image ``known`` answers is read from there instead.
        """
        return CachedOracle(self, passthrough)

    def _remember(self, hashes: Sequence[str], response: Response) -> None:
        form = (response.mode, response.k, response.probs is not None, response.scores is not None)
        if self._form is None:
            self._form = form
        elif form != self._form:
            raise TracemarkError(
                f"the model answered with {response.mode} (k={response.k}) after answering "
                f"with {self._form[0]} (k={self._form[1]}); its answers cannot be memoised"
            )
        self._num_classes = response.num_classes
        self._softmax_applied |= response.softmax_applied
        for i, h in enumerate(hashes):
            self._rows[h] = (
                response.labels[i],
                None if response.probs is None else response.probs[i],
                None if response.scores is None else response.scores[i],
            )

    def _ask(self, hashes: Sequence[str], images: np.ndarray) -> Response:
        """The answers to ``images``, all from ``known`` or all from one model query as
        asked (so a batch's answers never mix two batch compositions), memoised."""
        response = None if self.known is None else self.known.lookup(hashes)
        if response is None:
            response = self.model.query(images)
            if self.known is not None:
                self.known.add(hashes, response)
        self._remember(hashes, response)
        return response

    def _answer(self, hashes: Sequence[str]) -> Response:
        rows = [self._rows[h] for h in hashes]
        mode = self._form[0]
        return Response(
            mode=mode,  # type: ignore[arg-type]
            labels=np.stack([r[0] for r in rows]),
            probs=np.stack([r[1] for r in rows]) if self._form[2] else None,
            scores=np.stack([r[2] for r in rows]) if self._form[3] else None,
            num_classes=self._num_classes,
            softmax_applied=self._softmax_applied,
        )


class CachedOracle(Oracle):
    """One access mode's view of an :class:`AnswerCache` (see :meth:`AnswerCache.view`)."""

    def __init__(self, cache: AnswerCache, passthrough: bool = False) -> None:
        self.cache = cache
        self.passthrough = passthrough
        self.budget = None
        self._queries = 0

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        return self.cache.model.num_classes

    @property
    def queries(self) -> int:
        return self._queries

    def query(self, images: np.ndarray) -> Response:
        images = check_images(images)
        if len(images) == 0:
            return self.cache.model.query(images)
        hashes = image_hashes(images)
        if self.passthrough:
            response = self.cache._ask(hashes, images)
            self._queries += len(images)
            return response
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in self.cache._rows:
                first.setdefault(h, i)
        if first:
            idx = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            self.cache._ask(list(first), images[idx])
        self._queries += len(images)
        return self.cache._answer(hashes)


def restrict(oracle: Oracle, access: str, top_k: int) -> Oracle:
    """``oracle`` as an audit with ``access`` sees it: as is, top-k, or labels only."""
    from .restrict import LabelOnly, TopK

    if access == "probabilities":
        return oracle
    if access == "topk":
        return TopK(oracle, top_k)
    if access == "label":
        return LabelOnly(oracle)
    raise TracemarkError(f"unknown access {access!r}; use one of {ACCESSES}")
