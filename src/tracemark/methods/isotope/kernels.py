"""The isotope blend as one compiled pass per image (numba), on every core.

:func:`.marks.blend` in NumPy makes four to six passes over each block of images
(multiply, add, clip, scale, round, divide), on one core. This loop makes one, with the
same float32 operations in the same order (no fused multiply-add, no fast-math), so the
marked images are bit for bit what they were; it releases the GIL, and callers split the
images between threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_ZERO, _ONE, _INK = np.float32(0.0), np.float32(1.0), np.float32(255.0)


@njit(nogil=True, cache=True)
def blend_rows(  # pragma: no cover - compiled
    images: np.ndarray, keep: np.ndarray, ink: np.ndarray, quantise: bool, out: np.ndarray
) -> None:
    """out[i] = x * keep + ink, then (``quantise``) clipped to [0, 1] and rounded to 8-bit
    levels; ``images`` and ``out`` (n, P) float32, ``keep`` and ``ink`` (P,) float32."""
    for i in range(images.shape[0]):
        x, o = images[i], out[i]
        for j in range(x.shape[0]):
            v = x[j] * keep[j]
            v = v + ink[j]
            if quantise:
                if v < _ZERO:  # np.clip: NaN stays NaN
                    v = _ZERO
                elif v > _ONE:
                    v = _ONE
                v = np.rint(v * _INK) / _INK
            o[j] = v
