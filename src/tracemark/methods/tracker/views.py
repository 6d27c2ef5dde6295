"""Views: each image as the trainer's augmentation may have shown it (mirrored, shifted).

A model trained with pad-and-crop shifts and flips learned the marked images under those
transformations, so the tracker audit can query each image under a fixed set of them and
score a set by its mean loss over every (image, view) answer. The set of views is fixed
before the audit (by the option, never by the key or the answers) and applied alike to
the owner's published set and to every pseudo-user's, so the score is one fixed function
of (subset, mark) and the rank test stays exact (docs/methods/tracker.md).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ...errors import TracemarkError

# (dy, dx, flip): the identity first, then a mirror, then shifts by 2 and by 4 pixels
# with zero fill, as a pad-4 crop moves an image.
VIEWS: tuple[tuple[int, int, bool], ...] = (
    (0, 0, False),
    (0, 0, True),
    (2, 0, False),
    (-2, 0, False),
    (0, 2, False),
    (0, -2, False),
    (4, 0, False),
    (-4, 0, False),
    (0, 4, False),
    (0, -4, False),
)
# Each named set is the first n of VIEWS.
ViewSet = Literal["none", "flip", "flip-shift2", "flip-shift4"]
VIEW_SETS: dict[str, int] = {"none": 1, "flip": 2, "flip-shift2": 6, "flip-shift4": 10}


def view_count(name: str) -> int:
    """How many views the named set holds (1 for ``none``)."""
    try:
        return VIEW_SETS[name]
    except KeyError:
        raise TracemarkError(f"unknown views {name!r}; use one of {', '.join(VIEW_SETS)}") from None


def view(images: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """(N, H, W, C) images moved by (dy, dx) pixels with zero fill, then mirrored."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    if abs(dy) < h and abs(dx) < w:
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[:, yd, xd] = images[:, ys, xs]
    return np.ascontiguousarray(out[:, :, ::-1]) if flip else out


def with_views(images: np.ndarray, set_size: int, name: str) -> np.ndarray:
    """Sets of ``set_size`` images, each set followed by its own views: for sets
    (s, K, H, W, C) the result is (s * V * K, H, W, C), set by set, view by view, so a set's
    answers are one contiguous block. ``none`` returns ``images`` itself."""
    count = view_count(name)
    if count == 1:
        return images
    if len(images) % set_size:
        raise ValueError(f"{len(images)} images are not whole sets of {set_size}")
    shape = images.shape[1:]
    viewed = [view(images, *v).reshape(-1, set_size, *shape) for v in VIEWS[:count]]
    return np.stack(viewed, axis=1).reshape(-1, *shape)
