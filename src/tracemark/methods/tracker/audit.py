"""The tracker audit: set-based membership inference with an exact null.

A model trained on the marked images fits them unusually well, so the mean loss over the
owner's published set is lower than for *pseudo-users*: sets drawn from the owner's own
collection by the same random mechanism that chose the published set, marked with fresh
patterns from the same key. The key's randomness (which images are published, the
pattern, the noise) is all that differs between the owner's set and a pseudo-user's, so
when the model never saw the marked images they are exchangeable and the rank p-value is
exact, whatever the collection's size. Pseudo-users drawn from *other* images (a separate
holdout) are not: with small holdouts that accused one clean model in three at alpha =
0.05 (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...errors import TracemarkError
from ...keys import Key
from ...options import resolve
from ...rng import derive, derive_keys
from ...stats import SequentialRank, rank_p_value, standardised_gap
from ...verdict import Verdict
from ..base import (
    Progress,
    build_verdict,
    check_budget,
    check_key,
    check_reachable,
    majority_vote,
    resolve_access,
)
from .mark import NAME, apply_mark, choose_published, draw_pattern, mark_selected
from .options import TrackerOptions
from .params import TrackerParams
from .views import view_count, with_views

PURPOSE_PSEUDO_PATTERN = "tracker/pseudo-user/pattern"
PURPOSE_PSEUDO_NOISE = "tracker/pseudo-user/noise"
PURPOSE_PSEUDO_SAMPLE = "tracker/pseudo-user/sample"

Design = Literal["randomised publication", "mark randomisation"]
ScoreKind = Literal["cross-entropy", "zero-one"]
_LOSS_FLOOR = 1e-12


def resolve_design(
    key: Key, ids: Sequence[int | str], published: np.ndarray | int | None
) -> tuple[np.ndarray, Design, list[str]]:
    """The published mask, and the design that makes the audit exact, with its notes.

    ``published``: how many images the key chose (``mark_collection``'s ``publish``),
    a boolean mask of the images that were published, or None (all of them). A mask
    that is not the key's random choice was picked by hand: the audit then draws its
    pseudo-users from the published images alone, which is exact for any choice.
    """
    n = len(ids)
    if published is None or isinstance(published, (int, np.integer)):
        mask = choose_published(key, ids, None if published is None else int(published))
    else:
        mask = np.asarray(published, dtype=bool).ravel()
        if mask.shape != (n,):
            raise TracemarkError(f"the published mask has {mask.size} entries for {n} images")
        if not mask.any():
            raise TracemarkError("none of the collection's images is marked as published")
        if not mask.all() and not np.array_equal(mask, choose_published(key, ids, mask.sum())):
            return (
                mask,
                "mark randomisation",
                [
                    f"the {int(mask.sum())} published images are not the key's random choice from "
                    f"the {n} given (picked by hand, or marked without --publish): pseudo-users "
                    "re-mark the published images alone, which is exact for any choice"
                ],
            )
    if mask.all():
        return mask, "mark randomisation", []
    return mask, "randomised publication", []


def image_losses(response, label: int, kind: ScoreKind) -> np.ndarray:
    """Per-image loss under ``label``: cross-entropy, or the label-only 0/1 proxy."""
    if kind == "cross-entropy":
        return -np.log(np.maximum(response.prob_of(label), _LOSS_FLOOR))
    return (response.top1() != label).astype(np.float64)


def score_kind_for(response, access: str) -> ScoreKind:
    """Cross-entropy when probabilities are available (unless label-only is asked for)."""
    return "cross-entropy" if resolve_access(access, response) == "full" else "zero-one"


def majority_label(response) -> tuple[int, float]:
    """The most frequent top-1 label and the share of images voting for it."""
    vote = majority_vote(response)
    return vote.label, vote.share


@dataclass
class NullDistribution:
    """Mean losses of pseudo-users: what a never-trained owner's score looks like.

    ``label`` is the class every set was scored under, or None when each set (the
    owner's included) was scored under its own majority-vote label.
    """

    scores: np.ndarray
    label: int | None
    set_size: int
    kind: ScoreKind
    pool_size: int
    queries: int


def pseudo_user_batch(
    key: Key, pool: np.ndarray, users: Sequence[int], set_size: int
) -> np.ndarray:
    """Marked image sets of the given pseudo-users: (len(users) * set_size, H, W, C).

    Each pseudo-user is what the owner would have published had the key drawn other
    values: a uniformly random ``set_size``-subset of ``pool`` (the owner's collection,
    drawn exactly as :func:`choose_published` draws), marked with a fresh pattern and
    fresh noise from the distributions the owner's mark came from.
    """
    params: TrackerParams = key.typed_params()
    images, patterns, ids = [], [], []
    for u in users:
        rng = derive(key.seed, PURPOSE_PSEUDO_SAMPLE, u)
        images.append(pool[rng.choice(len(pool), size=set_size, replace=False)])
        patterns += [draw_pattern(derive(key.seed, PURPOSE_PSEUDO_PATTERN, u), params)] * set_size
        ids += [f"{u}:{j}" for j in range(set_size)]
    noise_keys = derive_keys(key.seed, PURPOSE_PSEUDO_NOISE, ids)
    return apply_mark(np.concatenate(images), patterns, noise_keys, params)


def set_score(response, label: int | None, kind: ScoreKind) -> tuple[float, int]:
    """Mean loss of one image set, under ``label`` or under the set's own majority vote."""
    if label is None:
        label = majority_label(response)[0]
    return float(image_losses(response, label, kind).mean()), label


def _batches(cap: int, first: int, largest: int) -> list[tuple[int, int]]:
    """(start, stop) of the pseudo-user batches: doubling from ``first`` to ``largest``,
    so an audit that stops early spends little past its stopping point."""
    out, start, size = [], 0, max(1, min(first, largest))
    while start < cap:
        out.append((start, min(cap, start + size)))
        start, size = start + size, min(largest, 2 * size)
    return out


def calibrate(
    oracle,
    key: Key,
    pool: np.ndarray,
    label: int | None,
    set_size: int,
    n_pseudo: int = 1000,
    kind: ScoreKind = "cross-entropy",
    progress: Progress | None = None,
    sequential: SequentialRank | None = None,
    views: str = "none",
) -> NullDistribution:
    """Query the model with up to ``n_pseudo`` pseudo-users drawn from ``pool``.

    ``pool`` is the owner's collection (randomised publication) or their published
    images (mark randomisation): the same images the owner's published set was drawn
    from, which is what makes the owner's score exchangeable with the pseudo-users'
    when the model never saw the marked images. Each set is scored under ``label``, or
    under its own majority-vote label when ``label`` is None, as the owner's set is.
    With ``sequential``, batches (doubling in size) stop as soon as that test stops;
    pseudo-user u is the same draw whatever the batches, so the p-value does not depend
    on them. ``views``: each set is queried under that fixed set of views (:mod:`.views`)
    and scored over all its (image, view) answers, as the owner's set is.
    """
    if not 1 <= set_size <= len(pool):
        raise TracemarkError(f"cannot draw sets of {set_size} from {len(pool)} images")
    start = oracle.queries
    answers = set_size * view_count(views)  # per set
    largest = max(1, 2048 // answers)
    first = largest if sequential is None else sequential.h
    scores: list[float] = []
    for s, e in _batches(n_pseudo, first, largest):
        users = list(range(s, e))
        marked = pseudo_user_batch(key, pool, users, set_size)
        response = oracle.query(with_views(marked, set_size, views))
        batch = [
            set_score(response.take(np.arange(i * answers, (i + 1) * answers)), label, kind)[0]
            for i in range(len(users))
        ]
        scores += batch
        if progress:
            progress(len(users))
        if sequential is not None and sequential.add(np.array(batch)):
            break
    return NullDistribution(
        scores=np.array(scores),
        label=label,
        set_size=set_size,
        kind=kind,
        pool_size=len(pool),
        queries=oracle.queries - start,
    )


def _check_collection(collection: np.ndarray, ids: Sequence[int | str] | None) -> list:
    if collection.ndim != 4 or len(collection) == 0:
        raise TracemarkError(
            "the collection must be a non-empty (N, H, W, C) array: every original image "
            "you gave to mark"
        )
    ids = list(range(len(collection))) if ids is None else list(ids)
    if len(ids) != len(collection):
        raise TracemarkError(f"{len(ids)} ids given for {len(collection)} images")
    return ids


@dataclass
class OwnerScore:
    """The owner's published set as the model answers it: its score and how it was read."""

    score: float
    losses: np.ndarray
    label: int
    label_source: str
    kind: ScoreKind
    mode: str
    softmax_applied: bool


def owner_score(
    oracle, published: np.ndarray, label: int | None, access: str, views: str = "none"
) -> OwnerScore:
    """Query the owner's published marked images (each under ``views``); their mean loss
    under ``label`` (or under the model's majority vote on them when None), over every
    (image, view) answer."""
    response = oracle.query(with_views(published, len(published), views))
    if label is not None and not 0 <= label < response.num_classes:
        raise TracemarkError(f"label {label} is outside the model's {response.num_classes} classes")
    kind = score_kind_for(response, access)
    score, used = set_score(response, label, kind)
    if label is None:
        share = float(np.mean(response.top1() == used))
        source = f"majority vote of the model ({share:.0%} of the images)"
    else:
        source = "given"
    return OwnerScore(
        score=score,
        losses=image_losses(response, used, kind),
        label=used,
        label_source=source,
        kind=kind,
        mode=response.mode,
        softmax_applied=bool(getattr(response, "softmax_applied", False)),
    )


def audit(
    oracle,
    key: Key,
    collection: np.ndarray,
    *,
    ids: Sequence[int | str] | None = None,
    published: np.ndarray | int | None = None,
    label: int | None = None,
    options: TrackerOptions | None = None,
    progress: Progress | None = None,
    **changes: Any,
) -> Verdict:
    """Was the model behind ``oracle`` trained on this owner's published marked images?

    ``collection``: the original images the owner gave to :func:`mark_collection` (or
    :func:`mark`), (N, H, W, C), with the ``ids`` they were marked with (default: their
    positions). ``published``: how many of them the key chose to publish, a boolean
    mask of the published ones, or None when all were published (see
    :func:`resolve_design`). ``label``: the class the images were labelled as; when
    None, every set (the owner's and each pseudo-user's) is scored under its own
    majority-vote label. ``options`` (or its fields as keywords, e.g. ``fixed=999``):
    :class:`TrackerOptions`.

    The owner's published set is regenerated from the key and the originals, and
    ranked among pseudo-users: sets drawn from the same images by the same random
    mechanism with fresh marks, drawn until the sequential test stops (or exactly
    ``fixed`` of them). If the model never saw the marked images
    it is independent of the key, so the owner's score and the pseudo-users' are i.i.d.
    given the model and the collection, and the rank p-value is exact for any
    collection size (docs/methods/tracker.md has the argument).
    """
    options = resolve(TrackerOptions, options, changes)
    check_key(key, NAME)
    check_reachable(options.cap, options.alpha, "pseudo-users", "raise --n-pseudo or --fixed")
    collection = np.asarray(collection, dtype=np.float32)
    ids = _check_collection(collection, ids)
    mask, design, notes = resolve_design(key, ids, published)
    pool = collection[mask] if design == "mark randomisation" else collection
    set_size = int(mask.sum())
    count = view_count(options.views)
    seen = f" under {count} views each" if count > 1 else ""
    check_budget(
        oracle,
        set_size * count * (1 + options.cap),
        f"your {set_size} published images, then up to {options.cap:,} pseudo-users of "
        f"{set_size}{seen}",
        "lower --n-pseudo (or --fixed)" + (", or fewer --views" if count > 1 else ""),
    )
    start = oracle.queries
    published_set = mark_selected(collection, key, ids, mask)
    owner = owner_score(oracle, published_set, label, options.access, options.views)
    sequential = None
    if options.sequential:
        h = min(options.stop_after, options.cap)
        sequential = SequentialRank(owner.score, h, options.cap, alternative="less")
    null = calibrate(
        oracle,
        key,
        pool,
        label,
        set_size,
        options.cap,
        owner.kind,
        progress,
        sequential,
        options.views,
    )
    if design == "mark randomisation":
        notes.append(
            "every pseudo-user holds your published images with a fresh mark: this detects "
            "training on the marked copies, not on your unmarked originals"
        )
    rule = Rule.of(options, sequential, len(null.scores))
    return _verdict(
        key, options, owner, null, design, len(collection), notes, oracle.queries - start, rule
    )


@dataclass
class Rule:
    """How many pseudo-users were drawn and why, and the p-value that rule gives."""

    p_value: float | None  # None: the fixed test's rank p-value over all ``used``
    used: int  # the pseudo-users the p-value ranks the owner among
    description: str
    statistics: dict[str, Any]

    @classmethod
    def of(cls, options: TrackerOptions, sequential: SequentialRank | None, drawn: int) -> Rule:
        if sequential is None:
            return cls(None, drawn, f"fixed: {drawn} pseudo-users", {"rule": "fixed"})
        stopped = "stopped early" if sequential.extreme >= sequential.h else "reached its cap"
        return cls(
            sequential.p_value(),
            sequential.draws,
            f"sequential (Besag-Clifford, h = {sequential.h}, cap {sequential.n_max}): "
            f"{stopped} after {sequential.draws} pseudo-users",
            {
                "rule": "sequential (Besag-Clifford)",
                "stop_after": sequential.h,
                "cap": sequential.n_max,
                "pseudo_users_drawn": drawn,
                "at_least_as_good": sequential.extreme,
                "trace": [list(t) for t in sequential.trace],
            },
        )


def _verdict(
    key,
    options,
    owner: OwnerScore,
    null: NullDistribution,
    design: Design,
    collection_size: int,
    notes: list[str],
    queries: int,
    rule: Rule,
) -> Verdict:
    used = null.scores[: rule.used]
    p_value = rule.p_value
    if p_value is None:
        p_value = rank_p_value(owner.score, used, alternative="less")
    statistics = {
        "user_mean_loss": owner.score,
        "null_mean_loss": float(used.mean()),
        "null_sd_loss": float(used.std(ddof=1)) if len(used) > 1 else 0.0,
        "n_pseudo_users": rule.used,
        **rule.statistics,
        "set_size": null.set_size,
        "collection_size": collection_size,
        "pool_size": null.pool_size,
        "design": design,
        "score": owner.kind,
        "pseudo_user_labels": "own majority vote" if null.label is None else "given label",
        "softmax_applied": owner.softmax_applied,
    }
    count = view_count(options.views)
    over = ""
    if count > 1:  # recorded only when used, so earlier verdicts recompute to themselves
        statistics["views"] = options.views
        statistics["view_count"] = count
        over = f" over {null.set_size} images x {count} views ({options.views})"
    access = owner.mode if owner.kind == "cross-entropy" else f"{owner.mode} (0/1-loss proxy)"
    return build_verdict(
        NAME,
        key,
        options,
        p_value=p_value,
        queries=queries,
        evidence={"user_losses": owner.losses.tolist(), "null_scores": null.scores.tolist()},
        label=owner.label,
        label_source=owner.label_source,
        effect=-standardised_gap(owner.score, used),
        effect_description="owner's mean loss below pseudo-users', in their standard deviations",
        access=access,
        test=(
            f"set-based membership inference, {design}: rank of the owner's mean {owner.kind} "
            f"loss{over} among pseudo-users drawn from {null.pool_size} images, "
            f"{rule.description} (exact)"
        ),
        statistics=statistics,
        notes=notes,
    )


def instance_scores(oracle, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Instance-based membership-inference baseline: each image's own cross-entropy loss.

    Lower means more member-like. Compare members vs non-members with
    :func:`tracemark.stats.fpr_at_tpr` on the negated losses.
    """
    response = oracle.query(np.asarray(images, dtype=np.float32))
    labels = np.asarray(labels)
    return -np.log(np.maximum(response.prob_of(labels), _LOSS_FLOOR))
