"""The tracker's mark: colour-stripe (or natural-image) outliers and binarised Perlin noise.

Everything here is vectorised over a batch and driven by explicit generators, so the
same key regenerates the same marks. Perlin noise is evaluated with matrix products
(pixel coordinates on a regular grid make the lattice interpolation separable), which
is what makes marking hundreds of times faster than a per-pixel loop.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
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
_ROWS_BYTES = 8 << 20  # lattice rows computed at once, per batch of images


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


@functools.lru_cache(maxsize=256)
def _lattice_counters(
    height: int, width: int, period: int, octaves: int
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The hashed stream's counters of every octave's lattice points, octave by octave
    (each (Gy, Gx) in row order), and where each octave starts in them. Read-only."""
    parts = []
    for octave in range(octaves):
        grid_x = _axis_matrix(width, period, octave)[2]
        grid_y = _axis_matrix(height, period, octave)[2]
        parts.append(
            (
                (np.uint64(octave) << _OCTAVE_SHIFT)
                + (np.arange(grid_y, dtype=np.uint64)[:, None] << _ROW_SHIFT)
                + np.arange(grid_x, dtype=np.uint64)[None, :]
                + np.uint64(_PARAM_COUNTERS)
            ).ravel()
        )
    counters = np.concatenate(parts)
    counters.setflags(write=False)
    return counters, tuple(np.cumsum([0] + [len(p) for p in parts]).tolist())


def _lattice_rows(
    keys: np.ndarray, height: int, width: int, period: int, octaves: int
) -> np.ndarray:
    """(g, sum over octaves of 2 Gy, W): every octave's lattice rows blended along x, per
    image, octave by octave (the x-gradient part, carrying x offsets, then the y part,
    with plain x weights).

    Gradient angles come from the key and the lattice point (one compiled pass for all
    octaves), their cosines and sines from NumPy in one call each, and each octave's
    blend along x is one BLAS product per part over all the images.
    """
    from .kernels import lattice_angles  # numba: loaded when marks are made

    counters, starts = _lattice_counters(height, width, period, octaves)
    g = len(keys)
    angles = np.empty(g * len(counters))  # octave by octave, each (g, Gy, Gx)
    for octave in range(octaves):
        a, b = starts[octave], starts[octave + 1]
        lattice_angles(keys, counters[a:b], angles[g * a : g * b].reshape(g, b - a))
    cosines, sines = np.cos(angles), np.sin(angles)
    parts = []
    for octave in range(octaves):
        x_plain, x_grad, grid_x = _axis_matrix(width, period, octave)
        a, b = g * starts[octave], g * starts[octave + 1]
        shape = (g, _axis_matrix(height, period, octave)[2], width)
        parts.append((cosines[a:b].reshape(-1, grid_x) @ x_grad).reshape(shape))
        parts.append((sines[a:b].reshape(-1, grid_x) @ x_plain).reshape(shape))
    return np.concatenate(parts, axis=1)


@functools.lru_cache(maxsize=256)
def _fractal_mix(height: int, period: int, octaves: int) -> np.ndarray:
    """(H, sum of 2 Gy over octaves): the y-blend of every octave side by side."""
    mix = np.concatenate([_row_mix(height, period, o)[0] for o in range(octaves)], axis=1)
    mix.setflags(write=False)
    return mix


def _perlin_groups(
    height: int, width: int, keys: np.ndarray, params: NoiseParams, step: int
) -> Iterator[tuple[np.ndarray, slice]]:
    """Fractal Perlin noise in blocks of at most ``step`` images, sorted by (period, octaves).

    Yields (noise, positions): float64 (b, H, W), valid until the next block, and which
    rows of the sorted order (``np.lexsort((octaves, period))``) it holds. Pixel
    coordinates lie on a regular grid, so each octave is ``Ay @ G @ Bx`` with sparse
    interpolation matrices Ay, Bx that depend only on (period, octave): images sharing
    (period, octaves) stack into one BLAS product over all their octaves at once.
    """
    order = np.lexsort((params.octaves, params.period))
    keys, period, octaves = keys[order], params.period[order], params.octaves[order]
    noise = np.empty((min(step, len(keys)), height, width))
    group = period * (MAX_OCTAVES + 1) + octaves
    bounds = np.flatnonzero(np.diff(group)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(keys)], strict=True):
        p, n = int(period[start]), int(octaves[start])
        mix = _fractal_mix(height, p, n)
        # Lattice rows for many images per call (fewer, larger NumPy calls), in batches
        # of about _ROWS_BYTES; the products then go block by block.
        batch = step * max(1, _ROWS_BYTES // (step * mix.shape[1] * width * 8))
        for a in range(start, stop, batch):
            b = min(a + batch, stop)
            rows = _lattice_rows(keys[a:b], height, width, p, n)
            for c in range(a, b, step):
                d = min(c + step, b)
                yield np.matmul(mix, rows[c - a : d - a], out=noise[: d - c]), slice(c, d)


def perlin_fractal(height: int, width: int, keys: np.ndarray, params: NoiseParams) -> np.ndarray:
    """(B, H, W) fractal Perlin noise over pixel coordinates / period, one image per key.

    Lacunarity 2, persistence 0.5. Gradient directions are hashed from the image's key
    and the lattice point, so an image's noise does not depend on the rest of the batch.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.lexsort((params.octaves, params.period))
    out = np.empty((len(keys), height, width))
    with threadpool_limits(1, user_api="blas"):
        for noise, rows in _perlin_groups(height, width, keys, params, len(keys)):
            out[order[rows]] = noise
    return out


# Pixels per block: a block's float64 noise (512 KB) stays in the core's cache from the
# Perlin product through the sine to the blend.
BLOCK_PIXELS = 1 << 16


def sine_noise_blocks(
    height: int, width: int, keys: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Perlin sine noise, sin(pi * normalise(perlin) * frequency), in cache-sized blocks.

    Yields (sines, images): float32 (b, H, W) and the positions in ``keys`` they belong
    to, in an internal order (images sharing Perlin parameters together); one buffer
    serves every block, so use each before asking for the next. The sine's argument is
    range-reduced exactly in float64 (:func:`.kernels.sine_phases`) before NumPy's
    float32 sine: the same operations, in the same order, as marks have always used, so
    they regenerate bit for bit. Callers limit BLAS to one thread (``threadpool_limits``):
    its threads are ~10x slower on these small products; parallelise over images instead.
    """
    from .kernels import sine_phases  # numba: loaded when marks are made, not at start-up

    keys = np.asarray(keys, dtype=np.uint64)
    params = NoiseParams.draw(keys)
    order = np.lexsort((params.octaves, params.period))
    frequency = params.frequency[order]
    step = max(1, BLOCK_PIXELS // (height * width))
    sines = np.empty((min(step, len(keys)), height, width), dtype=np.float32)
    for noise, rows in _perlin_groups(height, width, keys, params, step):
        block = sines[: len(noise)]
        flat = noise.reshape(len(noise), -1)
        sine_phases(noise, flat.min(axis=1), flat.max(axis=1), frequency[rows], block)
        np.sin(block, out=block)
        yield block, order[rows]


def sine_perlin_sign_noise(height: int, width: int, keys: np.ndarray, eps: float) -> np.ndarray:
    """(B, H, W) float32 binarised Perlin sine noise in {-eps, +eps} (0 only on exact ties).

    n = normalise(perlin); n = normalise(sin(n * freq * pi)); delta = sign(2n - 1) * eps.
    The last normalisation is a comparison with the midpoint of the sine's range, which
    needs no division.
    """
    from .kernels import midranges, sign_noise

    out = np.empty((len(keys), height, width), dtype=np.float32)
    signs = np.empty_like(out)
    with threadpool_limits(1, user_api="blas"):
        for sines, images in sine_noise_blocks(height, width, keys):
            pixels = sines.reshape(len(sines), -1)
            part = signs[: len(images)]
            sign_noise(pixels, midranges(pixels), np.float32(eps), part.reshape(len(part), -1))
            out[images] = part
    return out
