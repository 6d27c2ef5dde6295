"""Compiled loops (numba) for the tracker's binarising and blending.

NumPy needs one pass over the pixels per operation: thirteen to binarise the noise and
six to blend it into an image, each reading and writing memory. These loops do each
step in one pass, one pixel at a time, with the same IEEE operations in the same order
(float64 where NumPy used float64, float32 where it used float32, no fused multiply-add,
no fast-math), so marks regenerate bit for bit from keys made before them. The sine is
left to NumPy's (``np.sin`` between the two kernels): another library's sine can differ
in the last place, which would move a few pixels across the threshold.

The loops release the GIL: callers run them on chunks of images on every core.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_TWO_PI = np.float32(2.0 * np.pi)
_HALF = np.float32(0.5)
_ZERO, _ONE, _INK = np.float32(0.0), np.float32(1.0), np.float32(255.0)


@njit(nogil=True, cache=True)
def sine_phases(  # pragma: no cover - compiled
    noise: np.ndarray, lo: np.ndarray, hi: np.ndarray, frequency: np.ndarray, out: np.ndarray
) -> None:
    """out = float32(frac(normalise(noise) * frequency / 2)) * 2 pi, per image.

    ``noise`` (n, H, W) float64 Perlin noise, ``lo``, ``hi`` (n,) its least and greatest
    value per image, ``frequency`` (n,) integers, ``out`` (n, H, W) float32;
    ``np.sin(out)`` is then sin(pi * normalise(noise) * frequency), range-reduced
    exactly in float64 first.
    """
    n, h, w = noise.shape
    for i in range(n):
        span = hi[i] - lo[i]
        half = 0.5 * np.float64(frequency[i])
        scale = half / span if span > 0.0 else 0.0  # NumPy: half / inf
        base = lo[i]
        for y in range(h):
            for x in range(w):
                v = (noise[i, y, x] - base) * scale
                v = v - np.floor(v)
                out[i, y, x] = np.float32(v) * _TWO_PI


@njit(nogil=True, cache=True)
def _midrange(sines: np.ndarray, k: int) -> np.float32:  # pragma: no cover - compiled
    lo = sines[k, 0, 0]
    hi = lo
    for y in range(sines.shape[1]):
        for x in range(sines.shape[2]):
            lo = min(lo, sines[k, y, x])
            hi = max(hi, sines[k, y, x])
    return (hi + lo) * _HALF


@njit(nogil=True, cache=True)
def _sign_step(
    s: np.float32, mid: np.float32, eps: np.float32
) -> np.float32:  # pragma: no cover - compiled
    """sign(s - mid) * eps, without a branch: a rounded difference is zero only when s == mid."""
    return np.float32(s > mid) * eps - np.float32(s < mid) * eps


@njit(nogil=True, cache=True)
def sign_noise(
    sines: np.ndarray, eps: np.float32, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """out = sign(sines - midrange(sines)) * eps per image: the binarised noise itself."""
    n, h, w = sines.shape
    for k in range(n):
        mid = _midrange(sines, k)
        for y in range(h):
            for x in range(w):
                out[k, y, x] = _sign_step(sines[k, y, x], mid, eps)


@njit(nogil=True, cache=True)
def blend_marks(  # pragma: no cover - compiled
    images: np.ndarray,
    sines: np.ndarray,
    order: np.ndarray,
    patterns: np.ndarray,
    which: np.ndarray,
    eps: np.float32,
    weight: np.float32,
    out: np.ndarray,
) -> None:
    """out[i] = rint(255 r clip(images[i] + delta, 0, 1) + patterns[which[i]]) / 255.

    ``sines`` (n, H, W) are the images' sine noise in an internal order: row k belongs to
    image ``order[k]``, whose delta is sign(sine - midrange) * eps, one value for every
    channel. ``images`` and ``out`` (N, H, W * C) and ``patterns`` (m, H, W * C), C-
    contiguous: 255 (1 - r) times each pattern; ``which`` (N,) the pattern of each image;
    ``weight`` 255 r. Each image is read once and written once, a row at a time.
    """
    n, h, w = sines.shape
    row = images.shape[2]
    channels = row // w  # 1 or 3
    delta = np.empty(row, dtype=np.float32)
    for k in range(n):
        i = order[k]
        p = which[i]
        mid = _midrange(sines, k)
        for y in range(h):
            if channels == 3:
                for x in range(w):
                    d = _sign_step(sines[k, y, x], mid, eps)
                    delta[3 * x] = d
                    delta[3 * x + 1] = d
                    delta[3 * x + 2] = d
            else:
                for x in range(row):
                    delta[x] = _sign_step(sines[k, y, x], mid, eps)
            source, target, pattern = images[i, y], out[i, y], patterns[p, y]
            for j in range(row):  # contiguous: vectorised
                v = source[j] + delta[j]
                v = min(max(v, _ZERO), _ONE)  # clip x + delta (not to 255)
                target[j] = np.rint(v * weight + pattern[j]) / _INK
