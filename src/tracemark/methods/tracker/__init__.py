"""MembershipTracker: per-user outlier marks, audited by set-based membership inference.

Marking blends each image with the owner's colour-stripe (or natural-image) pattern and
per-image binarised Perlin sine noise (:mod:`.mark`); the audit ranks the mean loss of
the owner's published set among pseudo-users drawn from the owner's own collection by the
same random mechanism, which makes its p-value exact (:mod:`.audit`).

``METHOD`` is the object the registry finds (the shared surface of every method); the
functions below are the method's own, named as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...keys import Key
from ...oracle.open import ModelOptions
from ...verdict import Verdict
from ..base import AuditData, AuditOptions, AuditSources, MarkedData, Progress
from .audit import (
    NullDistribution,
    audit,
    calibrate,
    image_losses,
    instance_scores,
    majority_label,
    pseudo_user_batch,
    resolve_design,
    score_kind_for,
    set_score,
)
from .inputs import read_audit_data, tracker_collection
from .mark import (
    NAME,
    apply_mark,
    choose_published,
    draw_pattern,
    mark,
    mark_collection,
    mark_selected,
    user_pattern,
)
from .options import TrackerOptions
from .params import TrackerParams
from .views import VIEW_SETS, with_views

__all__ = [
    "METHOD",
    "VIEW_SETS",
    "NullDistribution",
    "TrackerOptions",
    "TrackerParams",
    "apply_mark",
    "audit",
    "calibrate",
    "choose_published",
    "draw_pattern",
    "image_losses",
    "instance_scores",
    "majority_label",
    "mark",
    "mark_collection",
    "mark_selected",
    "pseudo_user_batch",
    "resolve_design",
    "score_kind_for",
    "set_score",
    "tracker_collection",
    "user_pattern",
    "with_views",
]


class Tracker:
    """The tracker behind the shared method surface (see :class:`~..base.Method`)."""

    name = NAME
    kind = "images"
    params = TrackerParams
    options = TrackerOptions
    needs = ("marked", "originals")
    progress_unit = "pseudo-users"

    def mark(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        key: Key,
        *,
        ids: Sequence[int | str] | None = None,
        labels: np.ndarray | None = None,
        publish: int | None = None,
        progress_factory=None,
        device: str = "auto",
    ) -> MarkedData:
        """Mark the key's random choice of ``publish`` of the images (all when None)."""
        ids = list(range(len(images))) if ids is None else list(ids)
        chosen = choose_published(key, ids, publish)
        if isinstance(images, np.ndarray):
            marked = mark_selected(images, key, ids, chosen)
        else:  # images of any sizes
            picked = [x for x, c in zip(images, chosen, strict=True) if c]
            marked = mark(picked, key, ids=[i for i, c in zip(ids, chosen, strict=True) if c])
        return MarkedData(marked, chosen, np.ones(int(chosen.sum()), dtype=bool), key, labels)

    def audit(
        self,
        oracle,
        key: Key,
        data: AuditData,
        options: AuditOptions | None = None,
        progress: Progress | None = None,
    ) -> Verdict:
        collection = data.need(
            "collection", "the tracker audit needs the owner's collection (--originals)"
        )
        return audit(
            oracle,
            key,
            collection,
            ids=data.ids,
            published=data.published,
            label=data.label,
            options=options,
            progress=progress,
        )

    def read(self, key: Key, sources: AuditSources, model: ModelOptions) -> AuditData:
        return read_audit_data(key, sources, model)

    def progress_steps(self, options: TrackerOptions) -> int:
        return options.cap  # a sequential audit may stop well before


METHOD = Tracker()
