"""Compiled loops (numba) for the tracker's noise hashing, binarising and blending.

NumPy needs one pass over the pixels per operation: thirteen to binarise the noise and
six to blend it into an image, each reading and writing memory. These loops do each
step in one pass, one pixel at a time, with the same IEEE operations in the same order
(float64 where NumPy used float64, float32 where it used float32, no fused multiply-add,
no fast-math), so marks regenerate bit for bit from keys made before them. The sine is
left to NumPy's (``np.sin`` between the two kernels): another library's sine can differ
in the last place, which would move a few pixels across the threshold. So are the
cosines and sines of the Perlin gradients' angles, whose hashing (integer arithmetic,
exact anywhere) is compiled here.

The loops release the GIL: callers run them on chunks of images on every core.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...rng import SPLITMIX_GOLDEN, SPLITMIX_M1, SPLITMIX_M2, SPLITMIX_SHIFTS

_TWO_PI = np.float32(2.0 * np.pi)
_HALF = np.float32(0.5)
_ZERO, _ONE, _INK = np.float32(0.0), np.float32(1.0), np.float32(255.0)
_TWO_PI_64, _UNIT = 2.0 * np.pi, 1.0 / 9007199254740992.0  # 2**-53


@njit(nogil=True, cache=True)
def lattice_angles(  # pragma: no cover - compiled
    keys: np.ndarray, counters: np.ndarray, out: np.ndarray
) -> None:
    """out[i, j] = 2 pi * rng.hash_uniform(keys[i], counters[j]), bit for bit.

    Integer arithmetic (splitmix64, wrapping uint64), an exact conversion and one float64
    product: the same value as the NumPy definition on any machine, in one pass instead
    of a dozen array operations. ``keys`` (n,), ``counters`` (m,) uint64; ``out`` (n, m).
    """
    one = np.uint64(1)
    for i in range(keys.shape[0]):
        key = keys[i]
        for j in range(counters.shape[0]):
            z = key + (counters[j] + one) * SPLITMIX_GOLDEN
            z = (z ^ (z >> SPLITMIX_SHIFTS[0])) * SPLITMIX_M1
            z = (z ^ (z >> SPLITMIX_SHIFTS[1])) * SPLITMIX_M2
            z = z ^ (z >> SPLITMIX_SHIFTS[2])
            out[i, j] = _TWO_PI_64 * (np.float64(z >> SPLITMIX_SHIFTS[3]) * _UNIT)


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


def midranges(sines: np.ndarray) -> np.ndarray:
    """(greatest + least) / 2 of each image's sines, in float32 (NumPy's vectorised
    reductions; the order of a min or max does not change it)."""
    flat = sines.reshape(len(sines), -1)
    return (flat.max(axis=1) + flat.min(axis=1)) * np.float32(0.5)


@njit(nogil=True, cache=True)
def _sign_step(
    s: np.float32, mid: np.float32, eps: np.float32
) -> np.float32:  # pragma: no cover - compiled
    """sign(s - mid) * eps, without a branch: a rounded difference is zero only when s == mid."""
    return np.float32(s > mid) * eps - np.float32(s < mid) * eps


@njit(nogil=True, cache=True)
def sign_noise(
    sines: np.ndarray, mids: np.ndarray, eps: np.float32, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """out = sign(sines - mids) * eps per image (n, P): the binarised noise itself."""
    n, pixels = sines.shape
    for k in range(n):
        for j in range(pixels):
            out[k, j] = _sign_step(sines[k, j], mids[k], eps)


_SPAN = 1024  # pixels blended at a time: their deltas (12 KB for 3 channels) stay in L1


@njit(nogil=True, cache=True)
def blend_marks(  # pragma: no cover - compiled
    images: np.ndarray,
    sines: np.ndarray,
    mids: np.ndarray,
    order: np.ndarray,
    patterns: np.ndarray,
    which: np.ndarray,
    eps: np.float32,
    weight: np.float32,
    out: np.ndarray,
) -> None:
    """out[i] = rint(255 r clip(images[i] + delta, 0, 1) + patterns[which[i]]) / 255.

    ``sines`` (n, P) are the images' sine noise, P pixels each, in an internal order: row
    k belongs to image ``order[k]``, whose delta is sign(sine - mids[k]) * eps, one value
    for every channel. ``images`` and ``out`` (N, P * C) and ``patterns`` (m, P * C), C-
    contiguous: 255 (1 - r) times each pattern; ``which`` (N,) the pattern of each image;
    ``weight`` 255 r. Each image is read once and written once.
    """
    n, pixels = sines.shape
    channels = images.shape[1] // pixels  # 1 or 3
    delta = np.empty(_SPAN * channels, dtype=np.float32)
    for k in range(n):
        i, mid = order[k], mids[k]
        p = which[i]
        for start in range(0, pixels, _SPAN):
            stop = min(start + _SPAN, pixels)
            s = sines[k, start:stop]
            if channels == 3:
                for x in range(stop - start):
                    d = _sign_step(s[x], mid, eps)
                    delta[3 * x] = d
                    delta[3 * x + 1] = d
                    delta[3 * x + 2] = d
            else:
                for x in range(stop - start):
                    delta[x] = _sign_step(s[x], mid, eps)
            # Slices indexed by the bare loop counter: numba then knows every index is
            # non-negative and drops its negative-index check, which kept this loop 3x
            # slower than the arithmetic when indexed as images[i, base + j].
            a, b = start * channels, stop * channels
            x_in, pattern, x_out = images[i, a:b], patterns[p, a:b], out[i, a:b]
            for j in range(b - a):  # contiguous: vectorised
                v = x_in[j] + delta[j]
                v = min(max(v, _ZERO), _ONE)  # clip x + delta (not to 255)
                x_out[j] = np.rint(v * weight + pattern[j]) / _INK
