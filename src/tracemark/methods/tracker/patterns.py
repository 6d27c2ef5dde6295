"""The tracker's mark: colour-stripe (or natural-image) outliers and binarised Perlin noise.

Everything here is vectorised over a batch and driven by explicit generators, so the
same key regenerates the same marks. Perlin noise is evaluated with matrix products
(pixel coordinates on a regular grid make the lattice interpolation separable), which
is what makes marking hundreds of times faster than a per-pixel loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from ...bank import NaturalPattern, to_channels
from ...rng import hash_uniform

# The tracker paper's colour list, with "blue" corrected to a real blue (the authors'
# code lists (0, 255, 0), a duplicate green), so all eleven colours are distinct.
COMMON_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "purple": (255, 0, 255),
    "orange": (255, 165, 0),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "brown": (165, 42, 42),
    "pink": (255, 192, 203),
}
_COLOUR_TABLE = np.array(list(COMMON_COLOURS.values()), dtype=np.float64)


@dataclass(frozen=True)
class StripePattern:
    """Horizontal colour bands: the tracker's default outlier pattern."""

    colours: tuple[int, ...]  # indices into COMMON_COLOURS, one per band
    compress: bool = True

    @classmethod
    def draw(
        cls, rng: np.random.Generator, bands: int = 16, compress: bool = True
    ) -> StripePattern:
        idx = rng.integers(0, len(_COLOUR_TABLE), size=bands)
        return cls(tuple(int(i) for i in idx), compress)

    def render(self, height: int, width: int, channels: int = 3) -> np.ndarray:
        """(H, W, C) float64 in [0, 1]; equal bands, leftover rows in the last band."""
        bands = len(self.colours)
        band_height = height // bands
        rows = np.arange(height)
        band_of_row = (
            np.minimum(rows // band_height, bands - 1)
            if band_height
            else np.full(height, bands - 1)
        )
        colours = _COLOUR_TABLE[list(self.colours)]
        if self.compress:
            colours = colours / 8 + 128  # the authors' low-contrast default
        rgb = np.broadcast_to((colours / 255.0)[band_of_row][:, None, :], (height, width, 3))
        return to_channels(np.ascontiguousarray(rgb), channels)


Pattern = StripePattern | NaturalPattern


# Counter layout for the hashed noise stream of one image: parameters first, then one
# uniform per lattice point per octave.
_PARAM_COUNTERS = 3
_OCTAVE_SHIFT, _ROW_SHIFT = np.uint64(40), np.uint64(20)
MAX_OCTAVES = 4


@dataclass(frozen=True)
class NoiseParams:
    """Per-image Perlin parameters, drawn in the tracker paper's ranges."""

    period: np.ndarray  # (B,) int, U{30..59}
    octaves: np.ndarray  # (B,) int, U{1..4}
    frequency: np.ndarray  # (B,) int, U{20..59}

    @classmethod
    def draw(cls, keys: np.ndarray) -> NoiseParams:
        u = hash_uniform(keys[:, None], np.arange(_PARAM_COUNTERS)[None, :])
        return cls(
            period=30 + np.floor(u[:, 0] * 30).astype(np.int64),
            octaves=1 + np.floor(u[:, 1] * MAX_OCTAVES).astype(np.int64),
            frequency=20 + np.floor(u[:, 2] * 40).astype(np.int64),
        )


@functools.lru_cache(maxsize=512)
def _axis_matrix(length: int, period: int, octave: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Interpolation matrices along one axis at coordinates ``arange(length) * 2**octave / period``.

    Returns (plain, grad, grid): (grid, length) matrices whose column j holds the quintic
    fade weights of pixel j's two neighbouring lattice points (``plain``), and the same
    weights times the offset (f - d) from each point (``grad``), used along the axis whose
    gradient component is being dotted. Cached: they depend only on (length, period,
    octave). Read-only.
    """
    coords = np.arange(length, dtype=np.float64) * (2.0**octave / period)
    cell = np.floor(coords).astype(np.intp)
    frac = coords - cell
    fade = frac * frac * frac * (frac * (frac * 6 - 15) + 10)
    grid = int(cell[-1]) + 2
    j = np.arange(length)
    plain, grad = np.zeros((grid, length)), np.zeros((grid, length))
    plain[cell, j], plain[cell + 1, j] = 1.0 - fade, fade
    grad[cell, j], grad[cell + 1, j] = (1.0 - fade) * frac, fade * (frac - 1.0)
    plain.setflags(write=False)
    grad.setflags(write=False)
    return plain, grad, grid


@functools.lru_cache(maxsize=512)
def _row_mix(height: int, period: int, octave: int) -> tuple[np.ndarray, int]:
    """(H, 2 Gy): each pixel row's weights on the lattice rows of both gradient parts,
    scaled by the octave's amplitude (persistence 0.5)."""
    y_plain, y_grad, grid_y = _axis_matrix(height, period, octave)
    mix = np.concatenate([y_plain.T, y_grad.T], axis=1) * 0.5**octave
    mix.setflags(write=False)
    return mix, grid_y


def _octave_rows(
    keys: np.ndarray, height: int, width: int, period: int, octave: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two (g, Gy, W) arrays: one octave's lattice rows blended along x, per image.

    The x-gradient component carries x offsets, the y component plain x weights.
    """
    x_plain, x_grad, grid_x = _axis_matrix(width, period, octave)
    grid_y = _axis_matrix(height, period, octave)[2]
    lattice = (
        (np.uint64(octave) << _OCTAVE_SHIFT)
        + (np.arange(grid_y, dtype=np.uint64)[:, None] << _ROW_SHIFT)
        + np.arange(grid_x, dtype=np.uint64)[None, :]
        + np.uint64(_PARAM_COUNTERS)
    )
    angles = (2.0 * np.pi) * hash_uniform(keys[:, None, None], lattice[None])
    shape = (len(keys), grid_y, width)
    along_x_grad = (np.cos(angles).reshape(-1, grid_x) @ x_grad).reshape(shape)
    along_x_plain = (np.sin(angles).reshape(-1, grid_x) @ x_plain).reshape(shape)
    return along_x_grad, along_x_plain


@functools.lru_cache(maxsize=256)
def _fractal_mix(height: int, period: int, octaves: int) -> np.ndarray:
    """(H, sum of 2 Gy over octaves): the y-blend of every octave side by side."""
    mix = np.concatenate([_row_mix(height, period, o)[0] for o in range(octaves)], axis=1)
    mix.setflags(write=False)
    return mix


def _perlin_sorted(
    height: int, width: int, keys: np.ndarray, params: NoiseParams
) -> tuple[np.ndarray, np.ndarray]:
    """Fractal Perlin noise for images sorted by (period, octaves), and that order.

    Pixel coordinates lie on a regular grid, so each octave is ``Ay @ G @ Bx`` with
    sparse interpolation matrices Ay, Bx that depend only on (period, octave). Images
    sharing (period, octaves) stack into one BLAS product over all their octaves at
    once, written straight into the output.
    """
    order = np.lexsort((params.octaves, params.period))
    keys, period, octaves = keys[order], params.period[order], params.octaves[order]
    total = np.empty((len(keys), height, width))
    group = period * (MAX_OCTAVES + 1) + octaves
    bounds = np.flatnonzero(np.diff(group)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(keys)], strict=True):
        p, n = int(period[start]), int(octaves[start])
        parts = [_octave_rows(keys[start:stop], height, width, p, o) for o in range(n)]
        rows = np.concatenate([a for pair in parts for a in pair], axis=1)
        np.matmul(_fractal_mix(height, p, n), rows, out=total[start:stop])
    return total, order


def perlin_fractal(height: int, width: int, keys: np.ndarray, params: NoiseParams) -> np.ndarray:
    """(B, H, W) fractal Perlin noise over pixel coordinates / period, one image per key.

    Lacunarity 2, persistence 0.5. Gradient directions are hashed from the image's key
    and the lattice point, so an image's noise does not depend on the rest of the batch.
    """
    with threadpool_limits(1, user_api="blas"):
        total, order = _perlin_sorted(height, width, np.asarray(keys, dtype=np.uint64), params)
    out = np.empty_like(total)
    out[order] = total
    return out


# Pixels per block when binarising and blending: a block's float64 noise (512 KB) stays in
# the core's cache through every pass over it, instead of each pass going to memory.
BLOCK_PIXELS = 1 << 16


def sign_noise_sorted(
    height: int, width: int, keys: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Binarised Perlin sine noise in an internal order, and that order (see below).

    Callers that copy the noise anyway can scatter it back with ``out[order] = noise``
    instead of paying for a separate permutation.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    params = NoiseParams.draw(keys)
    # OpenBLAS threading on many small products is ~10x slower than one thread here;
    # callers parallelise over chunks of images instead.
    with threadpool_limits(1, user_api="blas"):
        noise, order = _perlin_sorted(height, width, keys, params)
    signs = np.empty(noise.shape, dtype=np.float32)
    frequency = params.frequency[order]
    step = max(1, BLOCK_PIXELS // (height * width))
    scratch = np.empty((min(step, len(keys)), height, width))
    for a in range(0, len(keys), step):
        b = min(a + step, len(keys))
        _binarise(noise[a:b], frequency[a:b], eps, signs[a:b], scratch[: b - a])
    return signs, order


def _binarise(
    noise: np.ndarray, frequency: np.ndarray, eps: float, out: np.ndarray, scratch: np.ndarray
) -> None:
    """normalise(noise) -> sin(pi n f) -> sign about the sine's midrange, times eps, into
    ``out`` (float32); ``noise`` (float64) is overwritten. The same operations in the same
    order as ever: marks regenerate bit for bit."""
    n = len(noise)
    flat = noise.reshape(n, -1)
    lo = flat.min(axis=1)[:, None, None]
    span = flat.max(axis=1)[:, None, None] - lo
    half_freq = 0.5 * frequency[:, None, None]
    noise -= lo
    noise *= half_freq / np.where(span > 0, span, np.inf)  # n * freq / 2, n in [0, 1]
    # sin(pi n f) = sin(2 pi frac(n f / 2)): the fractional part is exact in floating point.
    np.floor(noise, out=scratch)
    noise -= scratch
    np.copyto(out, noise, casting="same_kind")
    out *= np.float32(2.0 * np.pi)
    np.sin(out, out=out)
    signs = out.reshape(n, -1)
    mid = (signs.max(axis=1)[:, None, None] + signs.min(axis=1)[:, None, None]) * 0.5
    out -= mid
    np.sign(out, out=out)
    out *= np.float32(eps)


def sine_perlin_sign_noise(height: int, width: int, keys: np.ndarray, eps: float) -> np.ndarray:
    """(B, H, W) float32 binarised Perlin sine noise in {-eps, +eps} (0 only on exact ties).

    n = normalise(perlin); n = normalise(sin(n * freq * pi)); delta = sign(2n - 1) * eps.
    The sine's argument is range-reduced exactly in float64 (so the same on every
    machine) before a float32 sine. The last normalisation is a comparison with the
    midpoint of the sine's range, which needs no division.
    """
    noise, order = sign_noise_sorted(height, width, keys, eps)
    out = np.empty_like(noise)
    out[order] = noise
    return out
