"""Compiled 8-bit rounding and reading back (numba), for whole datasets on every core.

:func:`tracemark.images.to_uint8` and :func:`~tracemark.images.from_uint8` are NumPy: five
passes over each chunk to round, two to read back, on one core. For a released dataset
(a UBW release, a marked training split) these loops do each in one pass, with the same
IEEE float32 operations in the same order, in chunks on every core (the loops release the
GIL). Only large arrays come here (``images.COMPILED_FROM``), so single images never
load numba.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

_CHUNK = 1 << 18  # values per task
_ZERO, _INK = np.float32(0.0), np.float32(255.0)
_READ_BACK = np.arange(256, dtype=np.float32) / np.float32(255.0)  # k / 255, correctly rounded


@njit(nogil=True, cache=True)
def _round_to_uint8(x: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out = uint8(min(rint(fmax(float32(x), 0) * 255), 255)): NaN and negatives 0."""
    for i in range(x.shape[0]):
        v = np.float32(x[i])
        if not v > _ZERO:  # fmax(v, 0): NaN, -0 and negatives become 0
            v = _ZERO
        v = np.rint(v * _INK)
        if v > _INK:  # +inf too
            v = _INK
        out[i] = np.uint8(v)


@njit(nogil=True, cache=True)
def _read_uint8(pixels: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """out = float32(pixels) / 255, by table."""
    for i in range(pixels.shape[0]):
        out[i] = table[pixels[i]]


def on_every_core(kernel, n: int, *arrays: np.ndarray, chunk: int = _CHUNK) -> None:
    """``kernel(*slices)`` over chunks of ``chunk`` rows of ``arrays`` (first dimension n),
    in threads: for compiled loops that release the GIL."""
    starts = range(0, n, chunk)

    def run(s: int) -> None:
        kernel(*(a[s : s + chunk] for a in arrays))

    workers = min(len(starts), os.cpu_count() or 1)
    if workers <= 1:
        for s in starts:
            run(s)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, starts))


def round_to_uint8(flat: np.ndarray) -> np.ndarray:
    """:func:`tracemark.images.to_uint8` of a flat float32 or float64 array, compiled."""
    out = np.empty(flat.shape, np.uint8)
    on_every_core(_round_to_uint8, len(flat), flat, out)
    return out


def read_uint8(flat: np.ndarray) -> np.ndarray:
    """:func:`tracemark.images.from_uint8` of a flat uint8 array, compiled."""
    out = np.empty(flat.shape, np.float32)

    def kernel(pixels: np.ndarray, result: np.ndarray) -> None:
        _read_uint8(pixels, _READ_BACK, result)

    on_every_core(kernel, len(flat), flat, out)
    return out
