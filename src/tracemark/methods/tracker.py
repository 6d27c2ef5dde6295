"""MembershipTracker: per-user outlier marks, audited by set-based membership inference.

Marking blends each image with the owner's colour-stripe (or natural-image) pattern and
per-image binarised Perlin sine noise. A model trained on the marked images fits them
unusually well, so the mean loss over the owner's published set is lower than for
*pseudo-users*: sets drawn from the owner's own collection by the same random mechanism
that chose the published set, marked with fresh patterns from the same key. The key's
randomness (which images are published, the pattern, the noise) is all that differs
between the owner's set and a pseudo-user's, so when the model never saw the marked
images they are exchangeable and the rank p-value is exact, whatever the collection's
size. Pseudo-users drawn from *other* images (a separate holdout) are not: with small
holdouts that accused one clean model in three at alpha = 0.05.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import TracemarkError
from ..keys import Key, TrackerParams
from ..patterns import NaturalPattern, Pattern, StripePattern, sign_noise_sorted
from ..rng import derive, derive_keys
from ..stats import rank_p_value, smallest_p_value, standardised_gap
from ..verdict import Verdict

METHOD = "tracker"
PURPOSE_PATTERN = "tracker/pattern"
PURPOSE_NOISE = "tracker/noise"
PURPOSE_PSEUDO_PATTERN = "tracker/pseudo-user/pattern"
PURPOSE_PSEUDO_NOISE = "tracker/pseudo-user/noise"
PURPOSE_PSEUDO_SAMPLE = "tracker/pseudo-user/sample"
PURPOSE_PUBLISH = "tracker/publish"

ScoreKind = Literal["cross-entropy", "zero-one"]
Access = Literal["auto", "probabilities", "label"]
_CHUNK_PIXELS = 2_000_000  # per chunk: enough images to share BLAS products, cache-sized buffers
_LOSS_FLOOR = 1e-12


def draw_pattern(rng: np.random.Generator, params: TrackerParams) -> Pattern:
    """One outlier pattern, as the params ask (stripes by default)."""
    if params.pattern == "natural":
        return NaturalPattern.draw(rng)
    return StripePattern.draw(rng, bands=params.bands, compress=params.compress)


def user_pattern(key: Key) -> Pattern:
    """The key owner's outlier pattern (the same for all of their images)."""
    return draw_pattern(key.rng(PURPOSE_PATTERN), key.typed_params())


def _mark_chunk(
    images: np.ndarray,
    scaled_pattern: np.ndarray,
    noise_keys: np.ndarray,
    params: TrackerParams,
    out: np.ndarray,
) -> None:
    """Mark a chunk into ``out`` (a view of the same length); inputs are never modified.

    ``scaled_pattern``: (H, W, C) for all images, or (n, H, W, C), one per image.
    """
    _, h, w, _ = images.shape
    delta, order = sign_noise_sorted(h, w, noise_keys, params.eps)
    x = images[order]  # a new array, in the noise's order
    x += delta[..., None]
    np.clip(x, 0.0, 1.0, out=x)  # clip x + delta to the valid range (not to 255)
    # 255 * (r * x + (1 - r) * pattern), rounded to the 8-bit values a file stores:
    # audits must use what was published.
    x *= np.float32(255.0 * params.r)
    x += scaled_pattern if scaled_pattern.ndim == 3 else scaled_pattern[order]
    np.rint(x, out=x)
    np.clip(x, 0.0, 255.0, out=x)
    x /= np.float32(255.0)
    out[order] = x


def apply_mark(
    images: np.ndarray,
    pattern: Pattern | Sequence[Pattern],
    noise_keys: np.ndarray,
    params: TrackerParams,
) -> np.ndarray:
    """Mark a batch (N, H, W, C) with per-image noise keys; float32, exactly 8-bit values.

    marked = clip(r * clip(x + delta) + (1 - r) * pattern), computed in chunks on all
    cores. ``pattern`` is one pattern for all images, or one per image.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise TracemarkError(f"expected images shaped (N, H, W, 1 or 3), got {images.shape}")
    n, h, w, c = images.shape
    if len(noise_keys) != n:
        raise ValueError("one noise key per image is required")

    def scaled_render(p: Pattern) -> np.ndarray:
        return (255.0 * (1.0 - params.r) * p.render(h, w, c)).astype(np.float32)

    if isinstance(pattern, (StripePattern, NaturalPattern)):
        scaled = scaled_render(pattern)
    else:
        if len(pattern) != n:
            raise ValueError("one pattern per image is required")
        rendered = {p: scaled_render(p) for p in set(pattern)}
        scaled = np.stack([rendered[p] for p in pattern])
    chunk = max(1, _CHUNK_PIXELS // (h * w))
    starts = range(0, n, chunk)
    workers = min(len(starts), os.cpu_count() or 1)
    out = np.empty_like(images)

    def run(s: int) -> None:
        e = s + chunk
        per_chunk = scaled if scaled.ndim == 3 else scaled[s:e]
        _mark_chunk(images[s:e], per_chunk, noise_keys[s:e], params, out[s:e])

    if workers <= 1:
        for s in starts:
            run(s)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    return out


def mark(
    images: np.ndarray | Sequence[np.ndarray],
    key: Key,
    ids: Sequence[int | str] | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Mark one user's images with their key; returns new arrays, inputs untouched.

    ``images``: an (N, H, W, C) array, or a list of (H, W, C) arrays of any sizes.
    ``ids``: a stable identity per image (e.g. its relative path) that seeds its noise,
    so the same key regenerates the same marked file. Defaults to the position.
    """
    if key.method != METHOD:
        raise TracemarkError(
            f"this is a {key.method!r} key; the tracker method needs a tracker key"
        )
    params: TrackerParams = key.typed_params()
    n = len(images)
    ids = list(range(n)) if ids is None else list(ids)
    if len(ids) != n:
        raise TracemarkError(f"{len(ids)} ids given for {n} images")
    noise_keys = derive_keys(key.seed, PURPOSE_NOISE, ids)
    pattern = user_pattern(key)
    if isinstance(images, np.ndarray):
        return apply_mark(images, pattern, noise_keys, params)
    out: list[np.ndarray | None] = [None] * n
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(np.shape(img), []).append(i)
    for idx in by_shape.values():
        batch = np.stack([np.asarray(images[i], dtype=np.float32) for i in idx])
        for i, marked in zip(idx, apply_mark(batch, pattern, noise_keys[idx], params), strict=True):
            out[i] = marked
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- publication


Design = Literal["randomised publication", "mark randomisation"]


def choose_published(key: Key, ids: Sequence[int | str], count: int | None) -> np.ndarray:
    """Which images of a collection the owner publishes: the key's random ``count`` of them.

    A uniformly random subset, drawn from the key alone (independently of what the
    images show), over the ids in sorted order so that the order given does not matter.
    ``count`` None (or the collection's size) publishes every image. Returns a boolean
    mask aligned with ``ids``. This randomisation is what makes the audit exact.
    """
    n = len(ids)
    keys = [str(i) for i in ids]
    if len(set(keys)) != n:
        raise TracemarkError("every image of a collection needs its own id")
    if count is None:
        count = n
    if not 1 <= count <= n:
        raise TracemarkError(f"cannot publish {count} of a collection of {n} images")
    mask = np.zeros(n, dtype=bool)
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    mask[order[key.rng(PURPOSE_PUBLISH).choice(n, size=count, replace=False)]] = True
    return mask


def mark_collection(
    images: np.ndarray, key: Key, ids: Sequence[int | str], publish: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mark the key's choice of ``publish`` images of a collection (all when None).

    Returns (the marked images to publish, in collection order; the boolean mask of
    which collection images they are). Keep the whole collection: the audit needs it.
    """
    chosen = choose_published(key, ids, publish)
    return mark_selected(images, key, ids, chosen), chosen


def mark_selected(
    images: np.ndarray, key: Key, ids: Sequence[int | str], mask: np.ndarray
) -> np.ndarray:
    """The images ``mask`` selects, marked with their own ids (as mark_collection wrote them)."""
    picked = [i for i, c in zip(ids, mask, strict=True) if c]
    return mark(np.asarray(images)[mask], key, ids=picked)  # type: ignore[return-value]


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


# ----------------------------------------------------------------------------- audit


def image_losses(response, label: int, kind: ScoreKind) -> np.ndarray:
    """Per-image loss under ``label``: cross-entropy, or the label-only 0/1 proxy."""
    if kind == "cross-entropy":
        return -np.log(np.maximum(response.prob_of(label), _LOSS_FLOOR))
    return (response.top1() != label).astype(np.float64)


def score_kind_for(response, access: Access) -> ScoreKind:
    """Cross-entropy when probabilities are available (unless label-only is forced)."""
    if access == "probabilities" and response.mode != "probabilities":
        raise TracemarkError(
            f"--access probabilities was asked for, but the model answers with {response.mode}"
        )
    if access == "label" or response.mode != "probabilities":
        return "zero-one"
    return "cross-entropy"


def majority_label(response) -> tuple[int, float]:
    """The most frequent top-1 label and the share of images voting for it."""
    votes = np.bincount(response.top1(), minlength=response.num_classes)
    label = int(votes.argmax())
    return label, float(votes[label] / votes.sum())


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


def calibrate(
    oracle,
    key: Key,
    pool: np.ndarray,
    label: int | None,
    set_size: int,
    n_pseudo: int = 1000,
    kind: ScoreKind = "cross-entropy",
    progress: Callable[[int], None] | None = None,
) -> NullDistribution:
    """Query the model with ``n_pseudo`` pseudo-users drawn from ``pool``.

    ``pool`` is the owner's collection (randomised publication) or their published
    images (mark randomisation): the same images the owner's published set was drawn
    from, which is what makes the owner's score exchangeable with the pseudo-users'
    when the model never saw the marked images. Each set is scored under ``label``, or
    under its own majority-vote label when ``label`` is None, as the owner's set is.
    """
    if not 1 <= set_size <= len(pool):
        raise TracemarkError(f"cannot draw sets of {set_size} from {len(pool)} images")
    if n_pseudo < 1:
        raise TracemarkError("n_pseudo must be positive")
    start = oracle.queries
    users_per_batch = max(1, 2048 // set_size)
    scores = np.empty(n_pseudo)
    for s in range(0, n_pseudo, users_per_batch):
        users = list(range(s, min(n_pseudo, s + users_per_batch)))
        response = oracle.query(pseudo_user_batch(key, pool, users, set_size))
        for i in range(len(users)):
            part = response.take(np.arange(i * set_size, (i + 1) * set_size))
            scores[s + i] = set_score(part, label, kind)[0]
        if progress:
            progress(len(users))
    return NullDistribution(
        scores=scores,
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


def audit(
    oracle,
    key: Key,
    collection: np.ndarray,
    *,
    ids: Sequence[int | str] | None = None,
    published: np.ndarray | int | None = None,
    label: int | None = None,
    alpha: float = 0.01,
    n_pseudo: int = 1000,
    access: Access = "auto",
    progress: Callable[[int], None] | None = None,
    include_evidence: bool = True,
) -> Verdict:
    """Was the model behind ``oracle`` trained on this owner's published marked images?

    ``collection``: the original images the owner gave to :func:`mark_collection` (or
    :func:`mark`), (N, H, W, C), with the ``ids`` they were marked with (default: their
    positions). ``published``: how many of them the key chose to publish, a boolean
    mask of the published ones, or None when all were published (see
    :func:`resolve_design`). ``label``: the class the images were labelled as; when
    None, every set (the owner's and each pseudo-user's) is scored under its own
    majority-vote label.

    The owner's published set is regenerated from the key and the originals, and
    ranked among ``n_pseudo`` pseudo-users: sets drawn from the same images by the
    same random mechanism with fresh marks. If the model never saw the marked images
    it is independent of the key, so the owner's score and the pseudo-users' are i.i.d.
    given the model and the collection, and the rank p-value is exact for any
    collection size (docs/methods/tracker.md has the argument).
    """
    if key.method != METHOD:
        raise TracemarkError(f"this is a {key.method!r} key; use it with the {key.method} audit")
    if not 0 < alpha < 1:
        raise TracemarkError(f"alpha must be in (0, 1), got {alpha}")
    if smallest_p_value(n_pseudo) > alpha:
        raise TracemarkError(
            f"with {n_pseudo} pseudo-users the smallest possible p-value is "
            f"{smallest_p_value(n_pseudo):.3g} > alpha = {alpha}; raise --n-pseudo"
        )
    collection = np.asarray(collection, dtype=np.float32)
    ids = _check_collection(collection, ids)
    mask, design, notes = resolve_design(key, ids, published)
    pool = collection[mask] if design == "mark randomisation" else collection
    start = oracle.queries
    response = oracle.query(mark_selected(collection, key, ids, mask))
    if label is not None and not 0 <= label < response.num_classes:
        raise TracemarkError(f"label {label} is outside the model's {response.num_classes} classes")
    kind = score_kind_for(response, access)
    user_score, used_label = set_score(response, label, kind)
    losses = image_losses(response, used_label, kind)
    if label is None:
        share = float(np.mean(response.top1() == used_label))
        label_source = f"majority vote of the model ({share:.0%} of the images)"
    else:
        label_source = "given"
    set_size = int(mask.sum())
    null = calibrate(oracle, key, pool, label, set_size, n_pseudo, kind, progress)
    p_value = rank_p_value(user_score, null.scores, alternative="less")
    effect = -standardised_gap(user_score, null.scores)
    if design == "mark randomisation":
        notes.append(
            "every pseudo-user holds your published images with a fresh mark: this detects "
            "training on the marked copies, not on your unmarked originals"
        )
    statistics = {
        "user_mean_loss": user_score,
        "null_mean_loss": float(null.scores.mean()),
        "null_sd_loss": float(null.scores.std(ddof=1)) if len(null.scores) > 1 else 0.0,
        "n_pseudo_users": len(null.scores),
        "set_size": set_size,
        "collection_size": len(collection),
        "pool_size": null.pool_size,
        "design": design,
        "score": kind,
        "pseudo_user_labels": "given label" if label is not None else "own majority vote",
        "softmax_applied": bool(getattr(response, "softmax_applied", False)),
    }
    evidence = (
        {"user_losses": losses.tolist(), "null_scores": null.scores.tolist()}
        if include_evidence
        else {}
    )
    return Verdict(
        method=METHOD,
        decision=p_value <= alpha,
        p_value=p_value,
        alpha=alpha,
        label=used_label,
        label_source=label_source,
        effect=effect,
        effect_description="owner's mean loss below pseudo-users', in their standard deviations",
        queries=oracle.queries - start,
        access=response.mode if kind == "cross-entropy" else f"{response.mode} (0/1-loss proxy)",
        test=(
            f"set-based membership inference, {design}: rank of the owner's mean {kind} "
            f"loss among {len(null.scores)} pseudo-users drawn from {null.pool_size} images "
            "(exact)"
        ),
        key_commitment=key.commitment(),
        statistics=statistics,
        evidence=evidence,
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
