"""What the isotope audit measures: the model's belief in class y, and how a mark shifts it.

Scores are p_y, or minus y's rank when the model reveals only its top-K labels, so that
"higher means more belief" in both modes and every test is one-sided "greater". The
auxiliary pool holds images of other classes, with the model's baseline scores on them;
a mark's shift S is the mean change of the score when the mark is blended in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ...errors import TracemarkError
from ...rng import derive
from ..base import Progress, majority_vote, resolve_access
from .marks import Mark, blend

PURPOSE_AUX_ORDER = "isotope/aux-order"
ScoreMode = Literal["probability", "rank"]
QUERY_BATCH = 2048


def score_mode(response, access: str) -> ScoreMode:
    """Probabilities when the model reveals them (unless top-K ranks are asked for)."""
    return "probability" if resolve_access(access, response) == "full" else "rank"


def class_scores(response, label: int, mode: ScoreMode) -> np.ndarray:
    """Per-image belief in ``label``: p_y, or minus its rank (K + 1 when absent).

    Negating the rank makes "higher = more belief" in both modes, so every test below
    is one-sided "greater"; reports convert back to ranks.
    """
    if mode == "probability":
        return response.prob_of(label).astype(np.float64)
    return -response.rank_of(label).astype(np.float64)


def query_scores(oracle, images: np.ndarray, label: int, mode, access: str = "auto"):
    """Scores of ``label`` for ``images``, queried in batches; returns (scores, mode)."""
    parts = []
    for s in range(0, len(images), QUERY_BATCH):
        response = oracle.query(images[s : s + QUERY_BATCH])
        mode = mode or score_mode(response, access)
        parts.append(class_scores(response, label, mode))
    return np.concatenate(parts), mode


def mark_scores(
    oracle, images: np.ndarray, mark_: Mark, visibility: float, label: int, mode
) -> np.ndarray:
    """Scores of ``label`` on fresh copies of ``images`` carrying ``mark_``."""
    return query_scores(oracle, blend(images, mark_, visibility), label, mode)[0]


# ----------------------------------------------------------------------------- label, aux


@dataclass
class LabelDiscovery:
    """The class the user's images land in, and how confidently."""

    label: int
    share: float  # fraction of the user's images the model puts in that class
    votes: list[int]
    images: int
    source: str


def discover_label(oracle, images: np.ndarray) -> LabelDiscovery:
    """Query the model with the user's images; their majority top-1 class is y."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise TracemarkError("label discovery needs the user's images as an (N, H, W, C) array")
    vote = majority_vote(oracle.query(images))
    return LabelDiscovery(
        label=vote.label,
        share=vote.share,
        votes=vote.votes,
        images=len(images),
        source=f"discovered: the model puts {vote.share:.0%} of your {len(images)} images in it",
    )


@dataclass
class AuxPool:
    """Auxiliary images not of class y, with the model's baseline scores on them."""

    images: np.ndarray
    baseline: np.ndarray  # scores of y on the unmarked images (same order)
    mode: ScoreMode
    considered: int  # aux images looked at
    excluded: int  # of those, excluded as class y
    how: str
    queries: int


def build_aux_pool(
    oracle,
    aux,
    label: int,
    size: int,
    seed: str,
    access: str = "auto",
) -> AuxPool:
    """Up to ``size`` aux images not of class ``label``, in a key-seeded random order.

    ``aux``: an (N, H, W, C) array (class y is excluded by the model's prediction) or an
    object with ``.images`` and ``.labels`` (excluded by label). The baseline scores come
    from the same queries that filter, so filtering costs nothing extra.
    """
    images = np.asarray(getattr(aux, "images", aux), dtype=np.float32)
    labels = getattr(aux, "labels", None)
    if images.ndim != 4 or len(images) == 0:
        raise TracemarkError("the auxiliary set must be a non-empty (N, H, W, C) image array")
    order = derive(seed, PURPOSE_AUX_ORDER).permutation(len(images))
    start = oracle.queries
    if labels is not None:
        labels = np.asarray(labels)[order]
        keep = order[labels != label][:size]
        if len(keep) == 0:
            raise TracemarkError(f"the auxiliary set has no images outside class {label}")
        considered = int(np.searchsorted(np.cumsum(labels != label), len(keep)) + 1)
        baseline, mode = query_scores(oracle, images[keep], label, None, access)
        return AuxPool(
            images[keep],
            baseline,
            mode,
            considered,
            considered - len(keep),
            "by the labels given",
            oracle.queries - start,
        )
    kept, scores, considered, mode = [], [], 0, None
    while sum(map(len, kept)) < size and considered < len(images):
        chunk = order[considered : considered + max(64, size - sum(map(len, kept)))]
        considered += len(chunk)
        response = oracle.query(images[chunk])
        mode = mode or score_mode(response, access)
        other = response.top1() != label
        kept.append(chunk[other])
        scores.append(class_scores(response, label, mode)[other])
    keep = np.concatenate(kept)[:size]
    if len(keep) == 0:
        raise TracemarkError(
            f"the model puts every auxiliary image in class {label}: give images of other classes"
        )
    return AuxPool(
        images[keep],
        np.concatenate(scores)[:size],
        mode,
        considered,
        considered - sum(map(len, kept)),
        "by the model's prediction",
        oracle.queries - start,
    )


@dataclass
class ShiftNull:
    """Shifts S of external marks on one model, class and aux pool (shareable between
    audits of that class: e.g. a demo auditing many marks)."""

    shifts: np.ndarray
    label: int
    aux_size: int
    mode: str
    queries: int
    notes: list[str] = field(default_factory=list)


def mark_shift(oracle, pool: AuxPool, mark_: Mark, visibility: float, label: int):
    """S(t): mean change of the y score over the pool when ``mark_`` is blended in.

    Returns (S, per-image shifts).
    """
    shifted = mark_scores(oracle, pool.images, mark_, visibility, label, pool.mode)
    per_image = shifted - pool.baseline
    return float(per_image.mean()), per_image


def external_null(
    oracle,
    pool: AuxPool,
    marks: Sequence[Mark],
    visibility: float,
    label: int,
    progress: Progress | None = None,
) -> ShiftNull:
    """Shifts of the external marks: what a never-published mark's S looks like."""
    start = oracle.queries
    shifts = np.empty(len(marks))
    for i, m in enumerate(marks):
        shifts[i] = mark_shift(oracle, pool, m, visibility, label)[0]
        if progress:
            progress(1)
    return ShiftNull(shifts, label, len(pool.images), pool.mode, oracle.queries - start)


def describe_mode(mode: str) -> str:
    return "probability of y" if mode == "probability" else "rank of y (top-K; lower is more)"


@dataclass
class LabelChoice:
    """The class y an audit tests, where it came from, and what the vote looked like."""

    label: int
    source: str
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def resolve_label(
    oracle, images, label: int | None, carries_mark: np.ndarray | None
) -> LabelChoice:
    """The class y: given, or the model's majority vote on the user's *unmarked* images.

    A vote that included marked images could be swayed by the mark itself, and y chosen
    because the mark pushes towards it would make the mark's shift towards y look
    special on a model that never saw it. ``carries_mark`` says which images carry it.
    """
    if label is not None:
        return LabelChoice(label, "given")
    if images is None:
        raise TracemarkError("give your images (--marked) so their class can be found, or --label")
    notes = []
    if carries_mark is None:
        notes.append(
            "the class was voted on images some of which may carry your mark; give --label "
            "(or the images' ids) so the vote cannot depend on the mark"
        )
    else:
        carries_mark = np.asarray(carries_mark, dtype=bool)
        if carries_mark.shape != (len(images),):
            raise TracemarkError(f"{carries_mark.size} mark flags for {len(images)} images")
        if carries_mark.all():
            raise TracemarkError(
                "every one of your images carries the mark, so the model's vote on them could "
                "be swayed by the mark itself: give your class with --label"
            )
        images = np.asarray(images)[~carries_mark]
    found = discover_label(oracle, images)
    info = {"label_votes": found.votes, "label_share": found.share}
    source = (
        found.source if carries_mark is None else found.source.replace("images", "unmarked images")
    )
    return LabelChoice(found.label, source, info, notes)
