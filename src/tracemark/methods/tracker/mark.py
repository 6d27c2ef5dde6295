"""Marking a tracker owner's images: stripes (or a bank crop) blended over binarised noise.

Each image is blended with the owner's outlier pattern and its own binarised Perlin sine
noise, seeded by the key and the image's id, and rounded to the 8-bit values a file
stores. With ``publish`` the key also chooses which of the owner's images are published:
that uniformly random choice is what makes the audit exact (:mod:`.audit`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from ...errors import TracemarkError
from ...keys import Key
from ...rng import derive_keys
from ..base import check_key
from .params import TrackerParams
from .patterns import NaturalPattern, Pattern, StripePattern, sine_noise_blocks

NAME = "tracker"
PURPOSE_PATTERN = "tracker/pattern"
PURPOSE_NOISE = "tracker/noise"
PURPOSE_PUBLISH = "tracker/publish"


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
    patterns: np.ndarray,
    which: np.ndarray,
    noise_keys: np.ndarray,
    params: TrackerParams,
    out: np.ndarray,
) -> None:
    """Mark a chunk into ``out`` (a view of the same length); inputs are never modified.

    ``patterns`` (m, H, W, C): 255 (1 - r) times each pattern; ``which``: each image's.
    The noise comes in cache-sized blocks and is blended at once, each image read once
    and written once (:func:`.kernels.blend_marks`).
    """
    from .kernels import blend_marks, midranges  # numba: loaded when marks are made

    n, h, w, _ = images.shape
    eps, weight = np.float32(params.eps), np.float32(255.0 * params.r)
    flat, out_flat = images.reshape(n, -1), out.reshape(n, -1)
    pattern_flat = patterns.reshape(len(patterns), -1)
    for sines, positions in sine_noise_blocks(h, w, noise_keys):
        pixels = sines.reshape(len(sines), -1)
        mids = midranges(pixels)
        blend_marks(flat, pixels, mids, positions, pattern_flat, which, eps, weight, out_flat)


def apply_mark(
    images: np.ndarray,
    pattern: Pattern | Sequence[Pattern],
    noise_keys: np.ndarray,
    params: TrackerParams,
) -> np.ndarray:
    """Mark a batch (N, H, W, C) with per-image noise keys; float32, exactly 8-bit values.

    marked = rint(255 (r * clip(x + delta) + (1 - r) * pattern)) / 255, computed in
    chunks on all cores: the 8-bit values a file stores, since audits must use what was
    published. The terms lie in [0, 255 r] and [0, 255 (1 - r)], so the sum needs no
    clipping. ``pattern`` is one pattern for all images, or one per image.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise TracemarkError(f"expected images shaped (N, H, W, 1 or 3), got {images.shape}")
    n, h, w, c = images.shape
    if len(noise_keys) != n:
        raise ValueError("one noise key per image is required")
    if isinstance(pattern, (StripePattern, NaturalPattern)):
        distinct, which = [pattern], np.zeros(n, dtype=np.intp)
    else:
        if len(pattern) != n:
            raise ValueError("one pattern per image is required")
        index: dict[Pattern, int] = {}
        which = np.array([index.setdefault(p, len(index)) for p in pattern], dtype=np.intp)
        distinct = list(index)
    scale = 255.0 * (1.0 - params.r)
    patterns = np.stack([(scale * p.render(h, w, c)).astype(np.float32) for p in distinct])
    cores = os.cpu_count() or 1
    chunk = max(1, -(-n // cores))  # one chunk per core: few, large groups of shared noise
    starts = range(0, n, chunk)
    workers = min(len(starts), cores)
    out = np.empty_like(images)

    def run(s: int) -> None:
        e = s + chunk
        _mark_chunk(images[s:e], patterns, which[s:e], noise_keys[s:e], params, out[s:e])

    from . import kernels  # noqa: F401  (numba loads here, in this thread, not in two workers)

    with threadpool_limits(1, user_api="blas"):  # one BLAS thread per worker (see patterns)
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
    params: TrackerParams = check_key(key, NAME)
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
