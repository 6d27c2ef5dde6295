"""Data Isotopes: marks, blending, keys, selection and the tests' statistics (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark.keys import Key, load_key
from tracemark.methods import isotope
from tracemark.methods.isotope.marks import (
    ImageMark,
    NaturalMark,
    PixelSquareMark,
    RandomPixelsMark,
    blend,
    read_mark_file,
)
from tracemark.oracle import CallableOracle
from tracemark.rng import derive, derive_bytes
from tracemark.stats import deciding_round_p_value, gaussian_p_value, rank_p_value

from helpers import run_cli

SEED = "69736f746f70652d746573742d736565"


def _key(i: int = 0, **params) -> Key:
    return Key(method="isotope", params=params, seed=derive_bytes(SEED, "key", i).hex())


def _images(n: int = 6, h: int = 28, w: int = 28, c: int = 1) -> np.ndarray:
    return derive(SEED, "images").random((n, h, w, c)).astype(np.float32)


# ----------------------------------------------------------------------------- blend


@pytest.mark.parametrize("channels", [1, 3])
def test_blend_is_alpha_mix_of_mark_and_image(channels):
    x = _images(c=channels)
    mark = NaturalMark.draw(derive(SEED, "m"))
    t, mask = mark.render(28, 28, channels)
    assert mask.min() == 1.0  # the natural mark covers the whole image by default
    out = blend(x, mark, 0.4, quantise=False)
    np.testing.assert_allclose(out, 0.4 * t + 0.6 * x, atol=1e-6)
    q = blend(x, mark, 0.4)
    assert np.abs(q - out).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(np.round(q * 255), q * 255)  # 8-bit values


@pytest.mark.parametrize("quantise", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_whole_datasets_blend_as_small_batches_do(channels, quantise):
    """Batches of COMPILED_FROM values or more take one compiled pass per image on every
    core; every value equals the NumPy blocks' (small batches), for every kind of mark."""
    from tracemark.images import COMPILED_FROM

    rng = derive(SEED, "whole-dataset")
    n = COMPILED_FROM // (32 * 32 * channels) + 3
    x = rng.uniform(-0.05, 1.05, (n, 32, 32, channels)).astype(np.float32)  # past [0, 1]
    x[0, 0, :4, 0] = [np.nan, np.inf, 0.5 / 255, 1.5 / 255]
    marks = [
        NaturalMark.draw(derive(SEED, "m1")),
        NaturalMark.draw(derive(SEED, "m2"), grid=2, box=(0.5, 0.5, 0.5, 0.5)),
        PixelSquareMark.draw(derive(SEED, "m3")),
        RandomPixelsMark.draw(derive(SEED, "m4")),
    ]
    for mark in marks:
        whole = blend(x, mark, 0.4, quantise=quantise)
        parts = np.concatenate(
            [blend(x[a : a + 500], mark, 0.4, quantise) for a in range(0, n, 500)]
        )
        np.testing.assert_array_equal(whole.view(np.uint32), parts.view(np.uint32))


def test_blend_respects_the_mask_and_never_mutates_its_input():
    x = _images()
    before = x.copy()
    mark = NaturalMark.draw(derive(SEED, "m"), grid=2, box=(0.5, 0.5, 0.5, 0.5))
    out = blend(x, mark, 0.5, quantise=False)
    np.testing.assert_array_equal(x, before)
    assert out is not x and not np.shares_memory(out, x)
    np.testing.assert_array_equal(out[:, :14], x[:, :14])  # outside the box: untouched
    np.testing.assert_array_equal(out[:, :, :14], x[:, :, :14])
    assert not np.allclose(out[:, 14:, 14:], x[:, 14:, 14:])
    # Blending twice from the same input gives the same result (no hidden state).
    np.testing.assert_array_equal(blend(x, mark, 0.5, quantise=False), out)


def test_natural_mark_is_a_mosaic_of_full_contrast_bank_crops():
    mark = NaturalMark.draw(derive(SEED, "mosaic"), grid=2)
    t, mask = mark.render(32, 32, 1)
    assert len(mark.patterns) == 4 and mask.min() == 1.0
    for tile in (t[:16, :16], t[:16, 16:], t[16:, :16], t[16:, 16:]):
        assert tile.min() == 0.0 and tile.max() == 1.0  # each crop stretched to full contrast
    single = NaturalMark(mark.patterns[:1], grid=1)
    np.testing.assert_array_equal(single.render(16, 16, 1)[0], t[:16, :16])
    assert "2x2 mosaic" in mark.describe()


def _numpy_crop(photo: int, box, flip: bool, height: int, width: int) -> np.ndarray:
    """How bank crops were cut before 0.7.2 (NumPy slicing, then Pillow's resize)."""
    from tracemark.bank import _photos

    img = _photos()[photo]
    h, w = img.shape[:2]
    top, left, bh, bw = box
    y0, x0 = int(top * h), int(left * w)
    y1, x1 = max(y0 + 1, int((top + bh) * h)), max(x0 + 1, int((left + bw) * w))
    crop = img[y0:y1, x0:x1][:, ::-1] if flip else img[y0:y1, x0:x1]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.BICUBIC)
    return np.asarray(resized, dtype=np.float64) / 255.0


def test_bank_crops_are_the_pixels_earlier_versions_cut():
    """Crops are cut by Pillow now (faster); every mark must stay the one its key made."""
    from tracemark.bank import NaturalPattern, photo_count, render_crop

    rng = derive(SEED, "bank crops")
    patterns = [NaturalPattern.draw(rng) for _ in range(300)]
    assert len({p.photo for p in patterns}) == photo_count() and any(p.flip for p in patterns)
    for i, p in enumerate(patterns):
        side = (7, 14, 16, 28, 32, 64)[i % 6]
        new = render_crop(p.photo, p.box, p.flip, side, side + i % 3)
        np.testing.assert_array_equal(new, _numpy_crop(p.photo, p.box, p.flip, side, side + i % 3))


def test_pixel_square_and_random_pixel_marks():
    sq = PixelSquareMark(corner=3, size=0.25, stream=12345)
    t, mask = sq.render(28, 28, 1)
    assert mask.sum() == 7 * 7 and mask[-7:, -7:].min() == 1.0
    assert set(np.unique(t[-7:, -7:])) == {0.0, 1.0}  # black and white cells
    assert 10 < t[-7:, -7:].sum() < 39  # about half of the 49 cells white
    other = PixelSquareMark(corner=3, size=0.25, stream=12346).render(28, 28, 1)[0]
    assert not np.array_equal(other, t)  # the cells come from the stream
    rp = RandomPixelsMark(stream=12345, density=0.05)
    t, mask = rp.render(64, 64, 3)
    assert 0.03 < mask.mean() < 0.07 and t.min() == 1.0
    np.testing.assert_array_equal(rp.render(64, 64, 3)[1], mask)  # deterministic
    out = blend(np.zeros((1, 64, 64, 3), np.float32), rp, 1.0)
    np.testing.assert_array_equal(out[0, ..., 0] == 1.0, mask[..., 0] == 1.0)


def test_blend_rejects_bad_input():
    mark = PixelSquareMark(0, 0.25, 1)
    with pytest.raises(TracemarkError, match="visibility"):
        blend(_images(), mark, 0.0)
    with pytest.raises(TracemarkError, match="expected images"):
        blend(np.zeros((2, 8, 8, 2)), mark, 0.4)


# ----------------------------------------------------------------------------- keys, draws


def test_key_marks_are_deterministic_per_key_and_differ_between_keys(tmp_path):
    key = _key(0)
    key.save(tmp_path / "k.json")
    again = load_key(tmp_path / "k.json")
    assert isotope.key_mark(again) == isotope.key_mark(key)
    np.testing.assert_array_equal(
        isotope.key_mark(again).render(32, 32, 3)[0], isotope.key_mark(key).render(32, 32, 3)[0]
    )
    others = {isotope.key_mark(_key(i)) for i in range(1, 30)}
    assert isotope.key_mark(key) not in others and len(others) == 29
    ext = isotope.external_marks(key, 20)
    assert ext == isotope.external_marks(again, 20)
    assert isotope.key_mark(key) not in ext and len(set(ext)) == 20
    # Bank draws vary: several photos, crops and flips among 30 keys.
    assert len({p.photo for m in others for p in m.patterns}) > 10
    assert all(m.grid == 2 and len(m.patterns) == 4 for m in others)  # the default mosaic


@pytest.mark.parametrize("kind", ["pixel-square", "random-pixels"])
def test_other_mark_kinds_draw_from_their_own_family(kind):
    key = _key(0, mark=kind)
    m = isotope.key_mark(key)
    cls = PixelSquareMark if kind == "pixel-square" else RandomPixelsMark
    assert isinstance(m, cls) and all(isinstance(e, cls) for e in isotope.external_marks(key, 5))


@pytest.mark.parametrize("kind", ["natural", "pixel-square", "random-pixels", "image"])
def test_every_mark_kind_can_reach_alpha_among_its_externals(kind, tmp_path):
    """The rank test counts ties against the owner: an external that renders like the
    owner's mark raises the smallest attainable p. (Pixel squares were once a checkerboard
    in one of 8 positions and phases, so 99 externals held about 12 copies of the owner's
    mark and p could never fall below about 0.13.)"""
    params = {"mark": kind}
    if kind == "image":
        Image.fromarray(np.uint8(derive(SEED, "logo").integers(0, 256, (20, 20, 3)))).save(
            tmp_path / "logo.png"
        )
        png, sha = read_mark_file(tmp_path / "logo.png")
        params.update(image_png=png, image_sha256=sha)
    alpha, externals = 0.01, 99
    for i in range(3):
        key = _key(i, **params)

        def rendered(mark):
            return blend(np.full((1, 28, 28, 1), 0.5, np.float32), mark, 0.4).tobytes()

        own = rendered(isotope.key_mark(key))
        drawn = [rendered(e) for e in isotope.external_marks(key, externals)]
        assert own not in drawn  # the owner's mark is not among the externals
        assert len(set(drawn)) == externals  # the externals are distinct
        ties = sum(d == own for d in drawn)
        assert (1 + ties) / (externals + 1) <= alpha  # the smallest attainable p


def test_selection_marks_exactly_a_share_p_independent_of_order():
    key = _key(0, fraction=0.1)
    ids = [f"img{i:03d}.png" for i in range(95)]
    chosen = isotope.select_marked(key, ids)
    assert chosen.sum() == 10  # ceil(0.1 * 95)
    perm = derive(SEED, "perm").permutation(95)
    chosen_perm = isotope.select_marked(key, [ids[i] for i in perm])
    assert {ids[i] for i in perm[chosen_perm]} == {ids[i] for i in np.flatnonzero(chosen)}
    assert isotope.select_marked(_key(0, fraction=1.0), ids).all()
    assert isotope.select_marked(key, ids[:3]).sum() == 1  # at least one


def test_mark_returns_new_arrays_and_marks_only_the_chosen():
    key = _key(0, fraction=0.5)
    x = _images(8)
    before = x.copy()
    out, chosen = isotope.mark(x, key)
    np.testing.assert_array_equal(x, before)
    assert chosen.sum() == 4
    np.testing.assert_array_equal(out[~chosen], x[~chosen])
    np.testing.assert_array_equal(out[chosen], blend(x[chosen], isotope.key_mark(key), 0.4))
    # A list of differently sized images works the same way.
    listed, chosen_list = isotope.mark([x[0], x[1, :20, :24]], key, ids=[0, 1])
    assert listed[1].shape == (20, 24, 1) and chosen_list.sum() == 1


def test_params_are_validated():
    with pytest.raises(TracemarkError, match="mark-file"):
        Key.generate("isotope", mark="image")
    with pytest.raises(TracemarkError, match="mask"):
        Key.generate("isotope", mask=[0.5, 0.5, 0.6, 0.1])
    with pytest.raises(TracemarkError, match="visibility"):
        Key.generate("isotope", visibility=1.5)
    with pytest.raises(TracemarkError, match="only used with mark=image"):
        Key.generate("isotope", image_png="AAAA", image_sha256="00")


def test_user_mark_file_is_embedded_with_its_hash(tmp_path):
    logo = np.zeros((600, 400, 3), np.uint8)
    logo[100:300, 50:350] = (255, 0, 0)
    Image.fromarray(logo).save(tmp_path / "logo.png")
    key_file = tmp_path / "me.key"
    assert (
        run_cli(
            ["keygen", "-o", key_file, "--method", "isotope", "--mark-file", tmp_path / "logo.png"]
        )
        == 0
    )
    png, digest = read_mark_file(tmp_path / "logo.png")
    key = load_key(key_file)
    assert key.params["image_sha256"] == digest
    (tmp_path / "logo.png").unlink()  # the key alone regenerates the mark
    mark = isotope.key_mark(key)
    assert isinstance(mark, ImageMark)
    t, _ = mark.render(60, 40, 3)
    assert t[15:25, 10:30, 0].min() > 0.9 and t[15:25, 10:30, 1].max() < 0.1
    assert t[2, 2].max() < 0.05
    info = json.dumps(key.public_info())
    assert png not in info and "characters" in info  # never dumps the embedded image
    with Image.open(__import__("io").BytesIO(mark.png)) as im:
        assert max(im.size) == 256  # scaled down to keep the key small


# ----------------------------------------------------------------------------- statistics


def test_rank_and_gaussian_p_values_are_valid_on_exchangeable_nulls():
    rng = derive(SEED, "null")
    alpha, trials, externals = 0.05, 3000, 99
    draws = rng.normal(size=(trials, externals + 1))
    p_exact = np.array([rank_p_value(d[0], d[1:], "greater") for d in draws])
    p_gauss = np.array([gaussian_p_value(d[0], d[1:], "greater")[0] for d in draws])
    # Binomial(3000, 0.05) has sd 0.004: 0.062 is three sd above alpha.
    assert np.mean(p_exact <= alpha) <= 0.062
    assert np.mean(p_gauss <= alpha) <= 0.062
    assert np.mean(p_exact <= 0.5) > 0.45  # not trivially conservative either
    # A clear outlier reaches the smallest p.
    assert rank_p_value(10.0, draws[0, 1:], "greater") == pytest.approx(0.01)
    assert gaussian_p_value(10.0, draws[0, 1:], "greater")[0] < 1e-6


def test_deciding_round_p_value_matches_the_vote():
    rng = derive(SEED, "rounds")
    for _ in range(200):
        p = rng.random(5) * 0.3
        vote = np.count_nonzero(p < 0.1) > 0.6 * 5
        assert (deciding_round_p_value(p, 0.6) < 0.1) == vote


# ----------------------------------------------------------------------------- audit logic


def _fake_oracle(push: float, target: int = 3, watch=None):
    """Probabilities that rise for ``target`` with the mean brightness of the image."""

    def predict(x):
        if watch is not None:
            watch.append(x.copy())
        logits = np.zeros((len(x), 10))
        logits[:, 0] = 2.0
        logits[:, target] += push * x.reshape(len(x), -1).mean(axis=1)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    return CallableOracle(predict, num_classes=10)


def test_label_discovery_finds_the_majority_class_and_its_share():
    x = _images(10)
    x[:7] = 1.0  # bright images land in class 3 under the fake model
    x[7:] = 0.0
    found = isotope.discover_label(_fake_oracle(5.0), x)
    assert found.label == 3 and found.share == pytest.approx(0.7)
    assert found.votes[3] == 7 and found.votes[0] == 3 and "70%" in found.source


def test_aux_pool_excludes_the_class_by_label_or_by_prediction():
    from tracemark.datasets import LabelledImages

    x = _images(40)
    labels = np.arange(40) % 4
    pool = isotope.build_aux_pool(_fake_oracle(0.0), LabelledImages(x, labels, []), 2, 100, SEED)
    assert len(pool.images) == 30 and pool.excluded == 10 and "labels" in pool.how
    x[:10] = 1.0  # class 3 under the fake model
    x[10:] *= 0.3  # class 0
    pool = isotope.build_aux_pool(_fake_oracle(5.0), x, 3, 100, SEED)
    assert len(pool.images) == 30 and pool.excluded == 10 and "prediction" in pool.how
    assert np.all(pool.images.mean(axis=(1, 2, 3)) < 1.0)


def test_paper_rounds_blend_fresh_copies_with_a_fresh_external_per_round():
    key = _key(0)
    seen: list[np.ndarray] = []
    oracle = _fake_oracle(1.0, watch=seen)
    aux = _images(30)
    before = aux.copy()
    pool = isotope.build_aux_pool(oracle, aux, 3, 30, key.seed)
    pool_before = pool.images.copy()
    seen.clear()
    externals = isotope.external_marks(key, 3, isotope.PURPOSE_PAPER_EXTERNAL)
    p, _ = isotope.paper_rounds(oracle, pool, isotope.key_mark(key), externals, 0.4, 3, 20, SEED)
    assert len(p) == 3 and len(seen) == 6
    for r, ext in enumerate(externals):
        idx = derive(SEED, isotope.PURPOSE_PAPER_SAMPLE, r).choice(30, 20, replace=False)
        pristine = pool.images[idx]
        np.testing.assert_array_equal(seen[2 * r], blend(pristine, isotope.key_mark(key), 0.4))
        # The external-mark copy carries only the external mark (the authors' copy also
        # carried the first mark, blended in place).
        np.testing.assert_array_equal(seen[2 * r + 1], blend(pristine, ext, 0.4))
    assert len(set(externals)) == 3  # not external mark 0 reused
    np.testing.assert_array_equal(aux, before)  # nothing blended in place
    np.testing.assert_array_equal(pool.images, pool_before)


def test_audit_refuses_what_cannot_work():
    key = _key(0)
    oracle = _fake_oracle(1.0)
    with pytest.raises(TracemarkError, match="smallest possible p-value"):
        isotope.audit(oracle, key, None, _images(), label=3, alpha=0.01, externals=20)
    with pytest.raises(TracemarkError, match="--label"):
        isotope.audit(oracle, key, None, _images())
    with pytest.raises(TracemarkError, match="isotope key"):
        isotope.audit(oracle, Key.generate("tracker"), None, _images(), label=1)


def test_class_folders_of_mixed_colour_modes_load_as_one_mode(tmp_path):
    from tracemark.datasets import load_image_pool

    for c, shape in (("0", (8, 8)), ("1", (8, 8, 3))):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full(shape, 200, np.uint8)).save(tmp_path / c / "a.png")
    aux = load_image_pool(tmp_path)
    assert aux.images.shape == (2, 8, 8, 3) and aux.labels.tolist() == [0, 1]
