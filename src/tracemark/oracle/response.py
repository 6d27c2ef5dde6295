"""What a model reveals about a batch of images: probabilities, a top-k list, or a label.

A :class:`Response` is the only thing an audit ever sees of a model, so methods are
written against it and work unchanged whether the model gives full probabilities
or only its best guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ..errors import TracemarkError

AccessMode = Literal["probabilities", "topk", "label"]
ACCESS_MODES: tuple[str, ...] = get_args(AccessMode)

_MODE_HINT = {
    "topk": "this oracle reveals only its top-k labels and their scores",
    "label": "this oracle reveals only its top-1 label",
}


@dataclass(frozen=True, eq=False)
class Response:
    """A model's answer for N images.

    ``labels`` (N, K) lists classes best-first: K is the number of classes in
    ``"probabilities"`` mode, k in ``"topk"`` mode and 1 in ``"label"`` mode.
    ``probs`` (N, C) is only present in ``"probabilities"`` mode; ``scores`` (N, K)
    are the revealed scores aligned with ``labels``, or None when none are revealed.
    ``softmax_applied`` records that the model returned logits and we normalised them.
    """

    mode: AccessMode
    labels: np.ndarray
    probs: np.ndarray | None
    scores: np.ndarray | None
    num_classes: int
    softmax_applied: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ACCESS_MODES:
            raise TracemarkError(f"unknown access mode {self.mode!r}; use one of {ACCESS_MODES}")
        labels = np.asarray(self.labels)
        if labels.ndim != 2 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            raise TracemarkError(
                f"Response.labels must be an (N, K) integer array, got {labels.dtype} "
                f"{labels.shape}"
            )
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        n, k = labels.shape
        c = int(self.num_classes)
        object.__setattr__(self, "num_classes", c)
        if n and (labels.min() < 0 or labels.max() >= c):
            raise TracemarkError(f"Response.labels must lie in [0, {c}) (num_classes={c})")
        if self.mode == "probabilities":
            if self.probs is None:
                raise TracemarkError('a "probabilities" Response needs probs')
            probs = np.asarray(self.probs, dtype=np.float64)
            if probs.shape != (n, c) or k != c:
                raise TracemarkError(
                    f"a probabilities Response needs probs and labels of shape ({n}, {c}), "
                    f"got {probs.shape} and {labels.shape}"
                )
            object.__setattr__(self, "probs", probs)
        elif self.probs is not None:
            raise TracemarkError(f'a "{self.mode}" Response reveals no probabilities')
        if self.mode == "label" and n and k != 1:
            raise TracemarkError(f'a "label" Response has one label per image, got {k}')
        if self.mode == "topk" and n and not 1 <= k <= c:
            raise TracemarkError(f"a top-k Response needs 1 <= k <= {c}, got k={k}")
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64)
            if scores.shape != labels.shape:
                raise TracemarkError(
                    f"Response.scores must match labels' shape {labels.shape}, got {scores.shape}"
                )
            object.__setattr__(self, "scores", scores)

    @classmethod
    def from_probabilities(
        cls, probs: np.ndarray, num_classes: int | None = None, softmax_applied: bool = False
    ) -> Response:
        """A full-access response from (N, C) probability rows (assumed already valid).

        Ties are ranked by class index, so the ranking is deterministic.
        """
        probs = np.asarray(probs, dtype=np.float64)
        c = probs.shape[1] if num_classes is None else num_classes
        labels = np.argsort(-probs, axis=1, kind="stable")
        scores = np.take_along_axis(probs, labels, axis=1)
        return cls("probabilities", labels, probs, scores, c, softmax_applied)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def k(self) -> int:
        """How many labels are revealed per image."""
        return int(self.labels.shape[1])

    def top1(self) -> np.ndarray:
        """The model's best guess for each image, (N,) int64."""
        if self.labels.shape[1] == 0:
            return np.zeros(len(self), dtype=np.int64)
        return self.labels[:, 0].copy()

    def _targets(self, y: int | np.ndarray) -> np.ndarray:
        arr = np.asarray(y)
        if arr.ndim == 0:
            arr = np.full(len(self), arr)
        if arr.shape != (len(self),):
            raise TracemarkError(
                f"need one class per image: a single int or an array of shape ({len(self)},), "
                f"got shape {arr.shape}"
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TracemarkError(f"class labels must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_classes):
            raise TracemarkError(
                f"class labels must be in [0, {self.num_classes}); got {arr.min()}..{arr.max()}"
            )
        return arr

    def prob_of(self, y: int | np.ndarray) -> np.ndarray:
        """The probability the model gives class ``y`` (one per image, or one for all), (N,).

        Only available with full access: a restricted oracle hides these on purpose.
        """
        if self.mode != "probabilities":
            raise TracemarkError(
                f"probabilities are not available: {_MODE_HINT[self.mode]}. Use top1() or "
                "rank_of() (e.g. a 0/1 loss) instead"
            )
        targets = self._targets(y)
        return self.probs[np.arange(len(self)), targets]

    def rank_of(self, y: int | np.ndarray) -> np.ndarray:
        """1-based rank of class ``y`` for each image, (N,) int64; K + 1 when it is not revealed."""
        targets = self._targets(y)
        hit = self.labels == targets[:, None]
        found = hit.any(axis=1)
        return np.where(found, hit.argmax(axis=1) + 1, self.k + 1).astype(np.int64)

    @staticmethod
    def concat(responses: Sequence[Response]) -> Response:
        """Stack responses row-wise (e.g. answers to several batches) into one."""
        responses = list(responses)
        if not responses:
            raise TracemarkError("Response.concat needs at least one response")
        parts = [r for r in responses if len(r)] or responses[:1]
        first = parts[0]
        for r in parts[1:]:
            if (r.mode, r.num_classes, r.k) != (first.mode, first.num_classes, first.k):
                raise TracemarkError(
                    f"cannot concatenate a {r.mode} response with {r.num_classes} classes and "
                    f"k={r.k} to a {first.mode} response with {first.num_classes} classes and "
                    f"k={first.k}"
                )
            if (r.scores is None) != (first.scores is None):
                raise TracemarkError("cannot concatenate responses with and without scores")
        return Response(
            mode=first.mode,
            labels=np.concatenate([r.labels for r in parts]),
            probs=None if first.probs is None else np.concatenate([r.probs for r in parts]),
            scores=None if first.scores is None else np.concatenate([r.scores for r in parts]),
            num_classes=first.num_classes,
            softmax_applied=any(r.softmax_applied for r in parts),
        )

    def take(self, idx: int | slice | Sequence[int] | np.ndarray) -> Response:
        """The rows ``idx`` (indices, a boolean mask or a slice) as a new response."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        elif not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.size == 0:
                idx = idx.astype(np.int64)
        return Response(
            mode=self.mode,
            labels=self.labels[idx],
            probs=None if self.probs is None else self.probs[idx],
            scores=None if self.scores is None else self.scores[idx],
            num_classes=self.num_classes,
            softmax_applied=self.softmax_applied,
        )
