"""Backdoor triggers for dataset watermarks: a pasted patch or a blended full image.

A trigger is pure data plus an ``apply`` that returns new arrays (inputs are never
modified). Patches replace pixels, either in the bottom-right corner (UBW-P, BadNets)
or at per-image positions (UBW-C's sample-specific placement). Everything is
vectorised: one fancy-index write per batch, no per-image Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ...errors import TracemarkError

#: The UBW paper's 3x3 trigger, [[0,0,1],[0,1,0],[1,0,1]], on every channel.
CORNER_PATTERN = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)


def upscale(pattern: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a square (s, s[, C]) pattern to (size, size[, C])."""
    if size < 1:
        raise TracemarkError(f"patch size must be at least 1, got {size}")
    s = pattern.shape[0]
    idx = np.arange(size) * s // size
    return np.ascontiguousarray(pattern[idx][:, idx])


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise TracemarkError(
            f"triggers apply to (N, H, W, C) image batches with C = 1 or 3, got {images.shape}"
        )
    return images


def random_positions(rng: np.random.Generator, n: int, height: int, width: int, size: int):
    """(rows, cols) of the top-left corner of a ``size`` patch for ``n`` images, uniform."""
    if size > min(height, width):
        raise TracemarkError(f"a {size}x{size} patch does not fit in {height}x{width} images")
    rows = rng.integers(0, height - size + 1, size=n)
    cols = rng.integers(0, width - size + 1, size=n)
    return rows, cols


def paste(images: np.ndarray, patch: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A copy of ``images`` with ``patch`` (s, s[, C]) replacing pixels at (rows[i], cols[i])."""
    images = _check_images(images)
    out = np.array(images, dtype=np.float32, copy=True)
    n, _, _, c = out.shape
    patch = np.asarray(patch, dtype=np.float32)
    if patch.ndim == 2:
        patch = np.repeat(patch[:, :, None], c, axis=2)
    s = patch.shape[0]
    rows = np.broadcast_to(np.asarray(rows, dtype=np.int64), (n,))
    cols = np.broadcast_to(np.asarray(cols, dtype=np.int64), (n,))
    r = rows[:, None, None] + np.arange(s)[None, :, None]
    q = cols[:, None, None] + np.arange(s)[None, None, :]
    out[np.arange(n)[:, None, None], r, q] = patch
    return out


@dataclass(frozen=True)
class Trigger:
    """A watermark trigger.

    ``kind="patch"``: ``pattern`` (s, s[, C]) replaces pixels at the bottom-right corner
    (``placement="corner"``), the top-left one (``"opposite"``), or at positions given
    to :meth:`apply` (``"random"``).
    ``kind="blend"``: the image becomes (1 - alpha) * x + alpha * pattern (H, W, C).
    """

    kind: Literal["patch", "blend"]
    pattern: np.ndarray
    alpha: float = 1.0
    placement: Literal["corner", "opposite", "random"] = "corner"

    @property
    def size(self) -> int:
        """Side of a patch trigger in pixels."""
        return int(self.pattern.shape[0])

    def apply(
        self,
        images: np.ndarray,
        positions: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Triggered copies of ``images``; ``positions`` (rows, cols) for random placement."""
        images = _check_images(images)
        _, h, w, c = images.shape
        if self.kind == "blend":
            pattern = np.asarray(self.pattern, dtype=np.float32)
            if pattern.shape[:2] != (h, w) or pattern.shape[2] not in (1, c):
                raise TracemarkError(
                    f"the blend trigger is {pattern.shape}, the images are {(h, w, c)}: "
                    "a blended trigger only fits images of the size it was made for"
                )
            out = (1 - self.alpha) * images.astype(np.float32) + self.alpha * pattern
            return np.clip(out, 0, 1).astype(np.float32)
        if self.size > min(h, w):
            raise TracemarkError(f"a {self.size}x{self.size} trigger does not fit {h}x{w} images")
        if self.placement == "corner":
            return paste(images, self.pattern, h - self.size, w - self.size)
        if self.placement == "opposite":
            return paste(images, self.pattern, 0, 0)
        if positions is None:
            raise TracemarkError("a randomly placed trigger needs positions (rows, cols)")
        return paste(images, self.pattern, *positions)


def poison_count(n: int, gamma: float) -> int:
    """How many of ``n`` samples a watermark with poison rate ``gamma`` changes:
    round(gamma * n), at least one (UBW-P, UBW-C and the baselines alike)."""
    return max(1, round(gamma * n))
