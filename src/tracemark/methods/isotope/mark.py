"""Marking an isotope owner's images: the key's mark, blended into a share p of them.

The key's mark is one random draw from a bank of marks (crops of real photos by default);
*external* marks are fresh draws from the same bank that are never published, and the
audit ranks the key's mark among them (:mod:`.audit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import TracemarkError
from ...keys import Key
from ...rng import derive, derive_keys, hash_uniform
from ..base import check_key
from .marks import ImageMark, Mark, NaturalMark, PixelSquareMark, RandomPixelsMark, blend
from .params import IsotopeParams

NAME = "isotope"
PURPOSE_MARK = "isotope/mark"
PURPOSE_SELECT = "isotope/select"
PURPOSE_EXTERNAL = "isotope/external"
PURPOSE_PAPER_EXTERNAL = "isotope/paper/external"


def draw_mark(rng: np.random.Generator, params: IsotopeParams) -> Mark:
    """One random mark of the kind the params ask for (a user's file: a natural-bank draw)."""
    if params.mark == "pixel-square":
        return PixelSquareMark.draw(rng, params.square_size)
    if params.mark == "random-pixels":
        return RandomPixelsMark.draw(rng, params.pixel_density)
    return NaturalMark.draw(rng, params.tiles, params.mask)


def key_mark(key: Key) -> Mark:
    """The key owner's mark: the file embedded in the key, or the key's draw from the bank."""
    params: IsotopeParams = check_key(key, NAME)
    if params.mark == "image":
        return ImageMark.from_base64(params.image_png, params.image_sha256, params.mask)
    return draw_mark(key.rng(PURPOSE_MARK), params)


def external_marks(
    key: Key, count: int, purpose: str = PURPOSE_EXTERNAL, start: int = 0
) -> list[Mark]:
    """``count`` never-published marks from the same bank as the key's (fresh draws):
    externals ``start`` to ``start + count - 1``, each the same whatever the others."""
    params: IsotopeParams = check_key(key, NAME)
    return [draw_mark(derive(key.seed, purpose, e), params) for e in range(start, start + count)]


def select_marked(key: Key, ids: Sequence[int | str]) -> np.ndarray:
    """Which images get the mark: exactly ⌈p·N⌉ of them (at least one), chosen by the key.

    The choice hashes each image's id, so it does not depend on the order of the files.
    """
    params: IsotopeParams = check_key(key, NAME)
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=bool)
    count = max(1, int(np.ceil(params.fraction * n - 1e-9)))
    u = hash_uniform(derive_keys(key.seed, PURPOSE_SELECT, list(ids)), np.zeros(n, np.uint64))
    chosen = np.zeros(n, dtype=bool)
    chosen[np.argsort(u, kind="stable")[:count]] = True
    return chosen


def mark(
    images: np.ndarray | Sequence[np.ndarray],
    key: Key,
    ids: Sequence[int | str] | None = None,
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """Blend the key's mark into a fraction p of the images; return (new images, which).

    ``images``: (N, H, W, C) or a list of (H, W, C) arrays of any sizes. Unmarked images
    are returned as copies; inputs are never modified. ``ids`` (e.g. relative paths)
    decide which images are marked; defaults to positions.
    """
    params: IsotopeParams = check_key(key, NAME)
    n = len(images)
    ids = list(range(n)) if ids is None else list(ids)
    if len(ids) != n:
        raise TracemarkError(f"{len(ids)} ids given for {n} images")
    chosen = select_marked(key, ids)
    t = key_mark(key)
    if isinstance(images, np.ndarray):
        x = np.asarray(images, dtype=np.float32)
        if chosen.all():  # a publisher's usual case: every image blended, none copied first
            return blend(x, t, params.visibility), chosen
        out = np.array(x, copy=True)
        if chosen.any():
            idx = np.flatnonzero(chosen)
            out[idx] = blend(x[idx], t, params.visibility)
        return out, chosen
    result = [
        blend(img, t, params.visibility) if c else np.array(img, dtype=np.float32, copy=True)
        for img, c in zip(images, chosen, strict=True)
    ]
    return result, chosen
