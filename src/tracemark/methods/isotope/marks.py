"""Data Isotopes marks: what gets blended into an image, and where.

A mark renders, for an image size, a picture ``t`` and a mask ``m`` (which pixels it
covers). :func:`blend` computes ``x ⊕ (t, m, α) = α·t[m] + (1 − α)·x[m]`` into a new
array: inputs are never modified, so every image an audit queries is a fresh copy.

Kinds (methods spec §2): a crop of a real photo from the bank (the paper's best mark),
a square of random black and white cells in a corner, random white pixels, or a user-supplied image.
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...bank import NaturalPattern, to_channels
from ...errors import TracemarkError
from ...images import COMPILED_FROM
from ...rng import hash_uniform

Box = tuple[float, float, float, float]  # top, left, height, width as fractions of the image


def box_mask(height: int, width: int, box: Box | None) -> np.ndarray:
    """(H, W, 1) float32 mask: 1 inside ``box`` (fractions), everything when None."""
    mask = np.zeros((height, width, 1), dtype=np.float32)
    if box is None:
        mask[:] = 1.0
        return mask
    top, left, bh, bw = box
    y0, x0 = round(top * height), round(left * width)
    y1 = min(height, max(y0 + 1, round((top + bh) * height)))
    x1 = min(width, max(x0 + 1, round((left + bw) * width)))
    mask[y0:y1, x0:x1] = 1.0
    return mask


def autocontrast(t: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Stretch the ``low``-``high`` percentile range of a mark to [0, 1].

    Some bank crops are nearly flat (a night sky, a grey moon): blended at α they only
    dim the image and carry no feature a model could pick up. Stretching every crop to
    full contrast makes every draw a usable mark.
    """
    lo, hi = np.percentile(t, [low, high])
    if hi - lo < 1e-6:
        return np.clip(t, 0.0, 1.0)
    return np.clip((t - lo) / (hi - lo), 0.0, 1.0)


@dataclass(frozen=True)
class NaturalMark:
    """A g×g mosaic of random bank-photo crops (each maybe flipped), over the image or box.

    One crop (g = 1) is the paper's mark. The bank holds 16 photos, so single crops of the
    same photo are cousins a model may confuse with each other, and some crops look like a
    class on their own. A mosaic of g² independent crops makes every draw distinct and its
    appearance less like any one class (the default is g = 2).
    """

    patterns: tuple[NaturalPattern, ...]
    grid: int = 1
    box: Box | None = None

    @classmethod
    def draw(cls, rng: np.random.Generator, grid: int = 1, box: Box | None = None) -> NaturalMark:
        return cls(tuple(NaturalPattern.draw(rng) for _ in range(grid * grid)), grid, box)

    def render(self, height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        g = self.grid
        rows = np.linspace(0, height, g + 1).round().astype(int)
        cols = np.linspace(0, width, g + 1).round().astype(int)
        t = np.zeros((height, width, channels))
        for i in range(g):
            for j in range(g):
                th, tw = rows[i + 1] - rows[i], cols[j + 1] - cols[j]
                if th and tw:
                    tile = self.patterns[i * g + j].render(th, tw, channels)
                    t[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = autocontrast(tile)
        return t.astype(np.float32), box_mask(height, width, self.box)

    def describe(self) -> str:
        crops = "; ".join(
            f"photo {p.photo} crop {tuple(round(v, 3) for v in p.box)}" + (" flipped" * p.flip)
            for p in self.patterns
        )
        return f"{self.grid}x{self.grid} mosaic of bank crops: {crops}"


@dataclass(frozen=True)
class PixelSquareMark:
    """A square of black and white pixel cells in one corner (the paper's pixel-square mark).

    The paper's square is a checkerboard; a checkerboard in one of four corners with one of
    two phases makes only 8 distinct marks, so about one external mark in eight *is* the
    owner's and the audit could never reach p below ~0.13. Here each cell's colour is drawn
    from the key (a 7 x 7 square on 28-pixel images: 2^49 squares per corner), so the key's
    square and the externals are distinct, as the rank test needs.
    """

    corner: int  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    size: float  # side, as a fraction of the shorter image side
    stream: int  # uint64 key of the cells' colours

    @classmethod
    def draw(cls, rng: np.random.Generator, size: float = 0.25) -> PixelSquareMark:
        return cls(int(rng.integers(0, 4)), size, int(rng.integers(0, 2**63)))

    def render(self, height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        side = max(2, round(self.size * min(height, width)))
        u = hash_uniform(np.uint64(self.stream), np.arange(side * side, dtype=np.uint64))
        board = (u < 0.5).astype(np.float32).reshape(side, side)
        t = np.zeros((height, width, channels), dtype=np.float32)
        mask = np.zeros((height, width, 1), dtype=np.float32)
        y0 = 0 if self.corner in (0, 1) else height - side
        x0 = 0 if self.corner in (0, 2) else width - side
        t[y0 : y0 + side, x0 : x0 + side] = board[..., None]
        mask[y0 : y0 + side, x0 : x0 + side] = 1.0
        return t, mask

    def describe(self) -> str:
        return f"random black-and-white square in corner {self.corner}, side {self.size:g}"


@dataclass(frozen=True)
class RandomPixelsMark:
    """White pixels at positions hashed from a stream key (the paper's random-pixel mark)."""

    stream: int  # uint64 key of the positions
    density: float  # expected share of pixels that turn white

    @classmethod
    def draw(cls, rng: np.random.Generator, density: float = 0.05) -> RandomPixelsMark:
        return cls(int(rng.integers(0, 2**63)), density)

    def render(self, height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        u = hash_uniform(np.uint64(self.stream), np.arange(height * width, dtype=np.uint64))
        mask = (u < self.density).astype(np.float32).reshape(height, width, 1)
        return np.ones((height, width, channels), dtype=np.float32), mask

    def describe(self) -> str:
        return f"random white pixels, density {self.density:g}"


@functools.lru_cache(maxsize=8)
def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    rgb.setflags(write=False)
    return rgb


@dataclass(frozen=True)
class ImageMark:
    """A user-supplied mark image (a logo, a photo), embedded in the key as PNG bytes."""

    png: bytes
    sha256: str  # of the file the user supplied
    box: Box | None = None

    @classmethod
    def from_base64(cls, text: str, sha256: str, box: Box | None = None) -> ImageMark:
        return cls(base64.b64decode(text.encode("ascii"), validate=True), sha256, box)

    def render(self, height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        img = Image.fromarray((_decode_png(self.png) * 255).round().astype(np.uint8))
        rgb = np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), np.float64) / 255
        return to_channels(rgb, channels).astype(np.float32), box_mask(height, width, self.box)

    def describe(self) -> str:
        return f"user-supplied image (file sha256 {self.sha256[:12]}…)"


Mark = NaturalMark | PixelSquareMark | RandomPixelsMark | ImageMark


BLEND_BLOCK_PIXELS = 1 << 16  # pixels per block: each pass over a block stays in cache


def blend(images: np.ndarray, mark: Mark, visibility: float, quantise: bool = True) -> np.ndarray:
    """``α·t + (1 − α)·x`` on the mark's mask, into a new float32 array (inputs untouched).

    ``images``: (N, H, W, C) or (H, W, C) floats in [0, 1]. ``quantise`` rounds to the
    8-bit values a published file holds, so audits query what a model could train on.
    """
    if not 0 < visibility <= 1:
        raise TracemarkError(f"visibility must be in (0, 1], got {visibility}")
    x = np.asarray(images, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise TracemarkError(f"expected images shaped (N, H, W, 1 or 3), got {np.shape(images)}")
    n, h, w, c = x.shape
    t, mask = render_cached(mark, h, w, c)
    weight = np.float32(visibility) * mask  # (H, W, 1)
    keep, ink = np.float32(1.0) - weight, weight * t
    out = np.empty(x.shape, np.float32)  # a new array: never blends in place
    if x.size >= COMPILED_FROM:  # whole datasets: one compiled pass per image, every core
        _blend_compiled(x, np.broadcast_to(keep, t.shape), ink, quantise, out)
        return out[0] if single else out
    step = max(1, BLEND_BLOCK_PIXELS // (h * w))  # each block's passes stay in cache
    for a in range(0, n, step):
        block = np.multiply(x[a : a + step], keep, out=out[a : a + step])
        block += ink
        if quantise:
            np.clip(block, 0.0, 1.0, out=block)
            block *= np.float32(255.0)
            np.rint(block, out=block)
            block /= np.float32(255.0)
    return out[0] if single else out


def _blend_compiled(
    x: np.ndarray, keep: np.ndarray, ink: np.ndarray, quantise: bool, out: np.ndarray
) -> None:
    """:func:`.kernels.blend_rows` over chunks of images on every core."""
    import os

    from ...pixel_kernels import on_every_core  # numba: loaded for whole datasets only
    from .kernels import blend_rows

    n = len(x)
    keep_row = np.ascontiguousarray(keep, dtype=np.float32).reshape(-1)
    ink_row = np.ascontiguousarray(ink, dtype=np.float32).reshape(-1)

    def kernel(rows: np.ndarray, result: np.ndarray) -> None:
        blend_rows(rows, keep_row, ink_row, quantise, result)

    chunk = max(1, -(-n // (4 * (os.cpu_count() or 1))))
    on_every_core(kernel, n, x.reshape(n, -1), out.reshape(n, -1), chunk=chunk)


SMALL_MARK_PIXELS = 32 * 32  # marks this small are kept by the thousand (16 KB each)


def render_cached(mark: Mark, height: int, width: int, channels: int):
    """A mark's (t, mask) for one image size, cached and read-only.

    An audit renders up to 10/α external marks, and the evaluation harness audits each
    owner again on another access mode and model: small marks are kept by the thousand so
    the second pass renders none of them; large ones (a photo's size) by the hundred.
    """
    small = height * width <= SMALL_MARK_PIXELS
    return (_render_small if small else _render_large)(mark, height, width, channels)


def _render(mark: Mark, height: int, width: int, channels: int):
    t, mask = mark.render(height, width, channels)
    t.setflags(write=False)
    mask.setflags(write=False)
    return t, mask


_render_small = functools.lru_cache(maxsize=4096)(_render)
_render_large = functools.lru_cache(maxsize=256)(_render)


def read_mark_file(path, max_side: int = 256) -> tuple[str, str]:
    """A user's mark file as (base64 PNG to embed in the key, SHA-256 of the file).

    The file is read with the same guards as any image (bomb check, corrupt-file error)
    and scaled down to at most ``max_side`` pixels a side: marks are resized to each
    image anyway, and the key stays small.
    """
    from ...fsutil import sha256_file
    from ...images import read_image, to_uint8

    rgb = read_image(path, mode="RGB")
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    im = Image.fromarray(to_uint8(rgb))
    if scale < 1.0:
        im = im.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
        )
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii"), sha256_file(path)
