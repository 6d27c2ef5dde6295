"""Tracker marks: stripe pattern, Perlin noise, blending, and their stated properties."""

import numpy as np
import pytest

from tracemark.keys import Key
from tracemark.methods import tracker
from tracemark.methods.tracker.patterns import (
    _OCTAVE_SHIFT,
    _PARAM_COUNTERS,
    _ROW_SHIFT,
    COMMON_COLOURS,
    NoiseParams,
    StripePattern,
    _axis_matrix,
    _fractal_mix,
    perlin_fractal,
    sine_perlin_sign_noise,
)
from tracemark.rng import derive, derive_keys, hash_uniform

from helpers import TEST_SEED


def test_eleven_distinct_colours_with_a_real_blue():
    colours = list(COMMON_COLOURS.values())
    assert len(colours) == 11 and len(set(colours)) == 11
    assert COMMON_COLOURS["blue"] == (0, 0, 255)


@pytest.mark.parametrize("height", [64, 70, 224])
def test_stripes_have_16_equal_bands_leftover_in_last(height):
    p = StripePattern.draw(derive("33" * 16, "p"), bands=16, compress=False)
    img = p.render(height, 40, 3)
    assert img.shape == (height, 40, 3)
    assert np.all(img == img[:, :1])  # bands are horizontal
    band = height // 16
    for b in range(16):
        rows = img[b * band : (b + 1) * band if b < 15 else height, 0]
        assert np.all(rows == rows[0])
        assert (
            tuple(np.round(rows[0] * 255).astype(int))
            == list(COMMON_COLOURS.values())[p.colours[b]]
        )


def test_compressed_stripes_are_low_contrast_and_grey_version_uses_luma():
    p = StripePattern.draw(derive("33" * 16, "p"))
    img = p.render(32, 32, 3)
    assert img.min() >= 128 / 255 and img.max() <= (255 / 8 + 128) / 255
    grey = p.render(32, 32, 1)
    assert grey.shape == (32, 32, 1)
    np.testing.assert_allclose(grey[..., 0], img @ np.array([0.299, 0.587, 0.114]))


def naive_perlin(height, width, key, period, octaves):
    """Per-pixel textbook fractal Perlin with the same hashed gradients (reference)."""
    out = np.zeros((height, width))
    for o in range(octaves):
        s = 2.0**o / period
        for i in range(height):
            for j in range(width):
                y, x = i * s, j * s
                cy, cx = int(np.floor(y)), int(np.floor(x))
                fy, fx = y - cy, x - cx

                def grad_dot(gy, gx, oy, ox, o=o):
                    counter = (
                        (o << int(_OCTAVE_SHIFT)) + (gy << int(_ROW_SHIFT)) + gx + _PARAM_COUNTERS
                    )
                    a = (
                        2
                        * np.pi
                        * hash_uniform(np.array([key], dtype=np.uint64), np.array([counter]))[0]
                    )
                    return np.cos(a) * ox + np.sin(a) * oy

                fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
                n00 = grad_dot(cy, cx, fy, fx)
                n01 = grad_dot(cy, cx + 1, fy, fx - 1)
                n10 = grad_dot(cy + 1, cx, fy - 1, fx)
                n11 = grad_dot(cy + 1, cx + 1, fy - 1, fx - 1)
                wx, wy = fade(fx), fade(fy)
                top = n00 + wx * (n01 - n00)
                bottom = n10 + wx * (n11 - n10)
                out[i, j] += 0.5**o * (top + wy * (bottom - top))
    return out


def test_vectorised_perlin_matches_textbook_per_pixel_reference():
    keys = derive_keys("44" * 16, "noise", range(5))
    params = NoiseParams.draw(keys)
    fast = perlin_fractal(20, 23, keys, params)
    for b in range(5):
        ref = naive_perlin(20, 23, int(keys[b]), int(params.period[b]), int(params.octaves[b]))
        np.testing.assert_allclose(fast[b], ref, atol=1e-12)


def perlin_as_defined(height, width, keys, params):
    """Fractal Perlin noise as 0.6.0 defined it, one NumPy operation at a time: for each
    group of images sharing (period, octaves), per octave the hashed lattice angles,
    their cosines and sines and two BLAS products along x; then one along y per image.
    (The same BLAS calls on the same shapes as the batched code, so the comparison holds
    whatever BLAS kernel a CPU gets.)"""
    out = np.empty((len(keys), height, width))
    keys = np.asarray(keys, dtype=np.uint64)
    for period, octaves in sorted(
        set(zip(params.period.tolist(), params.octaves.tolist(), strict=True))
    ):
        members = np.flatnonzero((params.period == period) & (params.octaves == octaves))
        parts = []
        for o in range(octaves):
            x_plain, x_grad, grid_x = _axis_matrix(width, period, o)
            grid_y = _axis_matrix(height, period, o)[2]
            lattice = (
                (np.uint64(o) << _OCTAVE_SHIFT)
                + (np.arange(grid_y, dtype=np.uint64)[:, None] << _ROW_SHIFT)
                + np.arange(grid_x, dtype=np.uint64)[None, :]
                + np.uint64(_PARAM_COUNTERS)
            )
            angles = (2.0 * np.pi) * hash_uniform(keys[members, None, None], lattice[None])
            shape = (len(members), grid_y, width)
            parts.append((np.cos(angles).reshape(-1, grid_x) @ x_grad).reshape(shape))
            parts.append((np.sin(angles).reshape(-1, grid_x) @ x_plain).reshape(shape))
        rows = np.concatenate(parts, axis=1)
        for i, b in enumerate(members):
            out[b] = _fractal_mix(height, period, octaves) @ rows[i]
    return out


@pytest.mark.parametrize("shape", [(300, 32, 32), (40, 28, 28), (3, 224, 224), (24, 33, 47)])
def test_batched_perlin_equals_its_definition_bit_for_bit(shape):
    """The compiled hashing and the cosines and sines taken in one call change no bit of
    the noise (the marks' bit-for-bit test below relies on this one)."""
    n, height, width = shape
    keys = derive_keys(np.random.default_rng(TEST_SEED).bytes(32).hex(), "noise", range(n))
    params = NoiseParams.draw(keys)
    got = perlin_fractal(height, width, keys, params)
    want = perlin_as_defined(height, width, keys, params)
    np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))


def test_compiled_lattice_angles_equal_the_hashed_uniforms_bit_for_bit():
    from tracemark.methods.tracker.kernels import lattice_angles

    rng = np.random.default_rng(TEST_SEED)
    keys = rng.integers(0, 2**64, size=50, dtype=np.uint64)
    keys[:2] = [0, 2**64 - 1]  # wrapping arithmetic at both ends
    counters = rng.integers(0, 2**48, size=300, dtype=np.uint64)
    counters[:2] = [0, 2**64 - 2]
    got = np.empty((len(keys), len(counters)))
    lattice_angles(keys, counters, got)
    want = (2.0 * np.pi) * hash_uniform(keys[:, None], counters[None, :])
    np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))


def test_noise_params_in_paper_ranges():
    p = NoiseParams.draw(derive_keys("55" * 16, "n", range(5000)))
    assert set(np.unique(p.period)) == set(range(30, 60))
    assert set(np.unique(p.octaves)) == {1, 2, 3, 4}
    assert set(np.unique(p.frequency)) == set(range(20, 60))


def test_noise_is_binary_eps_and_balanced():
    eps = 8 / 255
    d = sine_perlin_sign_noise(32, 32, derive_keys("66" * 16, "n", range(200)), eps)
    assert d.shape == (200, 32, 32)
    vals = np.unique(d)
    assert set(np.round(vals * 255, 4)) <= {-8.0, 0.0, 8.0}
    assert 0.4 < (d > 0).mean() < 0.6
    assert np.mean(d == 0) < 1e-4


def test_noise_of_an_image_does_not_depend_on_its_batch():
    keys = derive_keys("77" * 16, "n", range(40))
    batch = sine_perlin_sign_noise(28, 28, keys, 0.03)
    for i in (0, 17, 39):
        np.testing.assert_array_equal(
            batch[i], sine_perlin_sign_noise(28, 28, keys[i : i + 1], 0.03)[0]
        )


@pytest.fixture(scope="module")
def photos():
    import skimage.data

    a = skimage.data.astronaut()[::8, ::8] / 255.0  # 64x64x3 real photo
    c = skimage.data.chelsea()[:256:4, :256:4] / 255.0
    return np.stack([a, c]).astype(np.float32)


def test_mark_blend_bound_range_and_quantisation(photos):
    key = Key.generate("tracker")
    before = photos.copy()
    marked = tracker.mark(photos, key)
    np.testing.assert_array_equal(photos, before)  # inputs untouched
    assert marked.dtype == np.float32 and marked.shape == photos.shape
    assert marked.min() >= 0 and marked.max() <= 1
    np.testing.assert_array_equal(marked, np.round(marked * 255) / 255)  # exactly 8-bit values
    # marked = r * clip(x + delta) + (1 - r) * pattern, then 8-bit rounding.
    pattern = tracker.user_pattern(key).render(64, 64, 3)
    residual = (marked - 0.3 * pattern) / 0.7 - photos
    assert np.abs(residual).max() <= 8 / 255 + 0.5 / 255 / 0.7 + 1e-6
    clipped = (photos > 8 / 255) & (photos < 1 - 8 / 255)
    assert np.abs(residual[clipped]).mean() > 7 / 255  # the noise really is +-eps


def test_mark_is_deterministic_per_key_and_id(photos):
    key = Key.generate("tracker")
    a = tracker.mark(photos, key, ids=["a.png", "b.png"])
    np.testing.assert_array_equal(a, tracker.mark(photos, key, ids=["a.png", "b.png"]))
    swapped = tracker.mark(photos[::-1], key, ids=["b.png", "a.png"])
    np.testing.assert_array_equal(a, swapped[::-1])
    assert not np.array_equal(
        a, tracker.mark(photos, Key.generate("tracker"), ids=["a.png", "b.png"])
    )


def test_mark_accepts_lists_of_mixed_sizes(photos):
    key = Key.generate("tracker", pattern="natural")
    small = photos[0][:40, :50]
    out = tracker.mark([photos[0], small, photos[1]], key)
    assert [o.shape for o in out] == [(64, 64, 3), (40, 50, 3), (64, 64, 3)]
    np.testing.assert_array_equal(out[2], tracker.mark(photos, key, ids=[0, 2])[1])


def test_mark_rejects_other_keys_and_bad_shapes(photos):
    from tracemark.errors import TracemarkError

    with pytest.raises(TracemarkError):
        tracker.mark(photos[0], Key.generate("tracker"))


def numpy_marks(images, key, ids, patterns=None):
    """Marks as the NumPy operations of 0.5.0 defined them, one array op at a time: the
    reference the compiled loops (tracker.kernels) must reproduce bit for bit."""
    params = key.typed_params()
    n, h, w, c = images.shape
    keys = derive_keys(key.seed, "tracker/noise", ids)
    noise_params = NoiseParams.draw(keys)
    noise = perlin_fractal(h, w, keys, noise_params)
    flat = noise.reshape(n, -1)
    lo = flat.min(axis=1)[:, None, None]
    span = flat.max(axis=1)[:, None, None] - lo
    noise = (noise - lo) * (
        0.5 * noise_params.frequency[:, None, None] / np.where(span > 0, span, np.inf)
    )
    noise -= np.floor(noise)
    sines = np.sin(noise.astype(np.float32) * np.float32(2.0 * np.pi))
    mid = (sines.reshape(n, -1).max(axis=1) + sines.reshape(n, -1).min(axis=1))[:, None, None] * 0.5
    delta = np.sign(sines - mid) * np.float32(params.eps)
    if patterns is None:
        patterns = [tracker.user_pattern(key)] * n
    scaled = np.stack(
        [(255.0 * (1.0 - params.r) * p.render(h, w, c)).astype(np.float32) for p in patterns]
    )
    x = np.clip(images + delta[..., None], 0.0, 1.0)
    x = x * np.float32(255.0 * params.r) + scaled
    return np.rint(x) / np.float32(255.0)


@pytest.mark.parametrize(
    "shape, params",
    [
        ((40, 32, 32, 3), {}),
        ((30, 28, 28, 1), {"compress": False}),
        ((3, 224, 224, 3), {"eps": 16 / 255, "r": 0.7}),
        ((20, 33, 47, 3), {"pattern": "natural"}),
    ],
)
def test_compiled_marks_equal_the_numpy_definition_bit_for_bit(shape, params):
    rng = np.random.default_rng(TEST_SEED)
    key = Key(method="tracker", seed=rng.bytes(32).hex(), params=params)
    images = rng.random(shape, dtype=np.float32)  # not only 8-bit values
    images[::2] = np.round(images[::2] * 255) / 255
    ids = [f"img-{i}" for i in range(shape[0])]
    marked = tracker.mark(images, key, ids=ids)
    np.testing.assert_array_equal(
        marked.view(np.uint32), numpy_marks(images, key, ids).view(np.uint32)
    )
    # one pattern per image, as audits mark pseudo-users
    patterns = [tracker.draw_pattern(rng, key.typed_params()) for _ in range(shape[0])]
    keys = derive_keys(key.seed, "tracker/noise", ids)
    per_image = tracker.apply_mark(images, patterns, keys, key.typed_params())
    expected = numpy_marks(images, key, ids, patterns)
    np.testing.assert_array_equal(per_image.view(np.uint32), expected.view(np.uint32))
