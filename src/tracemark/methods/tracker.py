"""MembershipTracker: per-user outlier marks, audited by set-based membership inference.

Marking blends each image with the user's colour-stripe (or natural-image) pattern and
per-image binarised Perlin sine noise. A model trained on the marked images fits them
unusually well, so the mean loss over the user's set is lower than for *pseudo-users*:
held-out images of the same class marked with fresh patterns from the same key. Those
pseudo-users are exchangeable with the user's set when the model never saw it, which
is what makes the rank p-value exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    """Mean losses of pseudo-users: what a never-trained user's score looks like.

    ``label`` is the class every set was scored under, or None when each set (the user's
    included) was scored under its own majority-vote label.
    """

    scores: np.ndarray
    label: int | None
    set_size: int
    kind: ScoreKind
    pool_size: int
    queries: int
    key_commitment: str
    notes: list[str] = field(default_factory=list)


def pseudo_user_batch(
    key: Key, pool: np.ndarray, users: Sequence[int], set_size: int
) -> np.ndarray:
    """Marked image sets of the given pseudo-users: (len(users) * set_size, H, W, C).

    Each pseudo-user draws ``set_size`` pool images (with replacement only when the
    pool is too small) and marks them with its own fresh pattern and noise.
    """
    params: TrackerParams = key.typed_params()
    images, patterns, ids = [], [], []
    for u in users:
        rng = derive(key.seed, PURPOSE_PSEUDO_SAMPLE, u)
        idx = rng.choice(len(pool), size=set_size, replace=len(pool) < set_size)
        images.append(pool[idx])
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
    access: Access = "auto",
    progress: Callable[[int], None] | None = None,
) -> NullDistribution:
    """Query the model with ``n_pseudo`` pseudo-users drawn from ``pool``.

    ``pool`` must hold images of the same kind as the user's (their own unpublished
    photos, or held-out images of their class): that is what makes the user's set
    exchangeable with the pseudo-users' when the model never saw it. Each set is scored
    under ``label``, or under its own majority-vote label when ``label`` is None, exactly
    as the user's set is.
    """
    pool = np.asarray(pool, dtype=np.float32)
    if pool.ndim != 4 or len(pool) == 0:
        raise TracemarkError("the held-out pool must be a non-empty (N, H, W, C) image array")
    if n_pseudo < 1 or set_size < 1:
        raise TracemarkError("n_pseudo and set_size must be positive")
    start = oracle.queries
    users_per_batch = max(1, 2048 // set_size)
    scores = np.empty(n_pseudo)
    kind: ScoreKind | None = None
    for s in range(0, n_pseudo, users_per_batch):
        users = list(range(s, min(n_pseudo, s + users_per_batch)))
        response = oracle.query(pseudo_user_batch(key, pool, users, set_size))
        kind = kind or score_kind_for(response, access)
        for i in range(len(users)):
            part = response.take(np.arange(i * set_size, (i + 1) * set_size))
            scores[s + i] = set_score(part, label, kind)[0]
        if progress:
            progress(len(users))
    notes = []
    if len(pool) < set_size:
        notes.append(f"pool holds {len(pool)} images, fewer than {set_size}: drew with replacement")
    return NullDistribution(
        scores=scores,
        label=label,
        set_size=set_size,
        kind=kind or "cross-entropy",
        pool_size=len(pool),
        queries=oracle.queries - start,
        key_commitment=key.commitment(),
        notes=notes,
    )


def _user_pool(holdout, label: int | None) -> np.ndarray:
    """Held-out images exchangeable with the user's: all of an unlabelled pool, or the
    user's class of a labelled one (which needs the class to be given)."""
    if holdout is None:
        raise TracemarkError("a held-out image pool is needed to build pseudo-users (--holdout)")
    images = np.asarray(getattr(holdout, "images", holdout), dtype=np.float32)
    labels = getattr(holdout, "labels", None)
    if labels is None:
        return images
    if label is None:
        raise TracemarkError(
            "a held-out set with class labels needs --label (the class of your images), so "
            "that pseudo-users come from the same class; or give a flat folder of your own "
            "unpublished images"
        )
    pool = images[np.asarray(labels) == label]
    if len(pool) == 0:
        raise TracemarkError(f"the held-out set has no images of class {label}")
    return pool


def audit(
    oracle,
    key: Key,
    marked: np.ndarray,
    holdout=None,
    *,
    label: int | None = None,
    alpha: float = 0.01,
    n_pseudo: int = 1000,
    access: Access = "auto",
    null: NullDistribution | None = None,
    progress: Callable[[int], None] | None = None,
    include_evidence: bool = True,
) -> Verdict:
    """Was the model behind ``oracle`` trained on this user's published marked images?

    ``marked``: the K published marked images (N, H, W, C). ``holdout``: never-published
    images exchangeable with the user's: an array (e.g. the user's own unpublished
    photos), or an object with ``.images`` and ``.labels`` from which the class ``label``
    is used. ``label``: the class the user's images were labelled as; when None, every
    set (the user's and each pseudo-user's) is scored under its own majority-vote label.
    ``null``: a precomputed pseudo-user distribution to reuse (it must match).
    """
    if key.method != METHOD:
        raise TracemarkError(f"this is a {key.method!r} key; use it with the {key.method} audit")
    if not 0 < alpha < 1:
        raise TracemarkError(f"alpha must be in (0, 1), got {alpha}")
    marked = np.asarray(marked, dtype=np.float32)
    if marked.ndim != 4 or len(marked) == 0:
        raise TracemarkError("need at least one marked image, as an (N, H, W, C) array")
    start = oracle.queries
    response = oracle.query(marked)
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
    set_size = len(marked)
    if null is None:
        if smallest_p_value(n_pseudo) > alpha:
            raise TracemarkError(
                f"with {n_pseudo} pseudo-users the smallest possible p-value is "
                f"{smallest_p_value(n_pseudo):.3g} > alpha = {alpha}; raise --n-pseudo"
            )
        pool = _user_pool(holdout, label)
        if pool.shape[1:] != marked.shape[1:]:
            raise TracemarkError(
                f"held-out images are {pool.shape[1:]} but marked images are {marked.shape[1:]}; "
                "they must have the same size and channels (use --size)"
            )
        null = calibrate(oracle, key, pool, label, set_size, n_pseudo, access, progress)
    elif (null.label, null.set_size, null.kind) != (label, set_size, kind):
        raise TracemarkError(
            f"the precomputed null scored {null.set_size} images under label {null.label} with "
            f"{null.kind} loss; this audit needs {set_size} images, label {label}, {kind} loss"
        )
    p_value = rank_p_value(user_score, null.scores, alternative="less")
    effect = -standardised_gap(user_score, null.scores)
    notes = list(null.notes)
    if null.key_commitment != key.commitment():
        notes.append("pseudo-users were drawn from another key (shared null distribution)")
    statistics = {
        "user_mean_loss": user_score,
        "null_mean_loss": float(null.scores.mean()),
        "null_sd_loss": float(null.scores.std(ddof=1)) if len(null.scores) > 1 else 0.0,
        "n_pseudo_users": len(null.scores),
        "set_size": set_size,
        "pool_size": null.pool_size,
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
        effect_description="user's mean loss below pseudo-users', in their standard deviations",
        queries=oracle.queries - start,
        access=response.mode if kind == "cross-entropy" else f"{response.mode} (0/1-loss proxy)",
        test=(
            f"set-based membership inference: rank of the user's mean {kind} loss "
            f"among {len(null.scores)} pseudo-users (exact)"
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
