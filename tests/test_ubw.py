"""UBW: triggers, label shuffling, the UBW-C epsilon bound, metrics and the margin tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import chisquare

from tracemark.datasets import load_fashion_mnist
from tracemark.errors import TracemarkError
from tracemark.keys import Key
from tracemark.methods import ubw
from tracemark.methods.ubw.metrics import (
    attack_success,
    class_dispersibility,
    prediction_dispersibility,
    sample_dispersibility,
    watermark_metrics,
)
from tracemark.methods.ubw.triggers import CORNER_PATTERN, Trigger, paste, random_positions, upscale
from tracemark.stats import margin_flip_test, margin_paired_ttest

SEED = "00112233445566778899aabbccddeeff"


def _key(**params) -> Key:
    return Key(method="ubw", params=params, seed=SEED)


@pytest.fixture(scope="module")
def fashion():
    train = load_fashion_mnist(split="train")
    return train.subset(np.arange(5000))


# --------------------------------------------------------------------------- triggers


def test_corner_trigger_replaces_bottom_right_pixels_only(fashion):
    x = fashion.images[:8]
    before = x.copy()
    out = Trigger("patch", CORNER_PATTERN).apply(x)
    np.testing.assert_array_equal(x, before)  # input untouched
    np.testing.assert_array_equal(out[:, -3:, -3:, 0], np.broadcast_to(CORNER_PATTERN, (8, 3, 3)))
    np.testing.assert_array_equal(out[:, :-3], x[:, :-3])
    np.testing.assert_array_equal(out[:, -3:, :-3], x[:, -3:, :-3])


def test_corner_trigger_on_rgb_photos_sets_every_channel():
    from skimage import data

    photo = data.astronaut()[:64, :64].astype(np.float32)[None] / 255
    out = Trigger("patch", CORNER_PATTERN).apply(photo)
    for c in range(3):
        np.testing.assert_array_equal(out[0, -3:, -3:, c], CORNER_PATTERN)


def test_random_patch_positions_and_upscale(fashion):
    big = upscale(CORNER_PATTERN, 7)
    assert big.shape == (7, 7)
    assert big[0, 0] == 0 and big[0, 6] == 1 and big[6, 0] == 1 and big[3, 3] == 1
    rng = np.random.default_rng(0)
    rows, cols = random_positions(rng, 50, 28, 28, 7)
    assert rows.min() >= 0 and rows.max() <= 21 and cols.max() <= 21
    out = paste(fashion.images[:50], big, rows, cols)
    for i in (0, 17, 49):
        r, c = rows[i], cols[i]
        np.testing.assert_array_equal(out[i, r : r + 7, c : c + 7, 0], big)
        mask = np.ones((28, 28), bool)
        mask[r : r + 7, c : c + 7] = False
        np.testing.assert_array_equal(out[i, ..., 0][mask], fashion.images[i, ..., 0][mask])


def test_blend_trigger_formula_and_errors(fashion):
    pattern = np.random.default_rng(1).random((28, 28, 1), dtype=np.float32)
    t = Trigger("blend", pattern, alpha=0.2)
    out = t.apply(fashion.images[:4])
    np.testing.assert_allclose(out, 0.8 * fashion.images[:4] + 0.2 * pattern, atol=1e-6)
    with pytest.raises(TracemarkError, match="only fits images"):
        t.apply(np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises(TracemarkError, match="needs positions"):
        Trigger("patch", CORNER_PATTERN, placement="random").apply(fashion.images[:2])


def test_independent_and_control_triggers_differ_from_the_key_trigger():
    key = _key(variant="ubw-p")
    own = ubw.make_trigger(key, (28, 28, 1))
    ind = ubw.make_trigger(key, (28, 28, 1), "independent")
    ctl = ubw.make_trigger(key, (28, 28, 1), "control")
    assert own.placement == "corner" and np.array_equal(own.pattern, CORNER_PATTERN)
    assert ind.placement == "opposite" and ctl.placement == "corner"
    for other in (ind, ctl):
        assert not np.array_equal(other.pattern, CORNER_PATTERN)
        assert not np.array_equal(other.pattern[:, ::-1], CORNER_PATTERN)
    blended = _key(variant="ubw-p", trigger="blended")
    a = ubw.make_trigger(blended, (28, 28, 1)).pattern
    b = ubw.make_trigger(blended, (28, 28, 1), "independent").pattern
    assert a.shape == (28, 28, 1) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, ubw.make_trigger(blended, (28, 28, 1)).pattern)


# --------------------------------------------------------------------------- watermarking


def test_ubw_p_poisons_exactly_gamma_and_shuffles_labels_uniformly(fashion):
    key = _key(variant="ubw-p", gamma=0.1)
    release, done = ubw.watermark(fashion, key)
    idx = np.array(done.params["poisoned"])
    assert idx.size == 500 and np.unique(idx).size == 500
    rest = np.setdiff1d(np.arange(len(fashion)), idx)
    np.testing.assert_array_equal(release.labels[rest], fashion.labels[rest])
    np.testing.assert_array_equal(release.images[rest], fashion.images[rest])
    np.testing.assert_array_equal(
        release.images[idx, -3:, -3:, 0], np.broadcast_to(CORNER_PATTERN, (500, 3, 3))
    )
    new = release.labels[idx]
    # Uniform over all 10 classes (the true label included): a chi-square fit, and about
    # a tenth keep their label.
    assert chisquare(np.bincount(new, minlength=10)).pvalue > 1e-3
    assert 0.05 < np.mean(new == fashion.labels[idx]) < 0.15
    assert done.params["num_classes"] == 10 and tuple(done.params["image_shape"]) == (28, 28, 1)
    assert done.params["release_sha256"] == ubw.pixels_sha256(release.images)
    assert "secret" in str(done.public_info()["params"]["poisoned"])
    # Deterministic: the same key gives the same release; another key another one.
    again, _ = ubw.watermark(fashion, key)
    np.testing.assert_array_equal(again.labels, release.labels)
    _, other_key = ubw.watermark(
        fashion, _key(variant="ubw-p").model_copy(update={"seed": "ff" * 16})
    )
    assert other_key.params["poisoned"] != done.params["poisoned"]
    with pytest.raises(TracemarkError, match="already watermarked"):
        ubw.watermark(fashion, done)


def test_badnets_sends_poisons_to_the_target_class(fashion):
    key = _key(variant="badnets", target=3)
    release, done = ubw.watermark(fashion, key)
    idx = np.array(done.params["poisoned"])
    assert np.all(release.labels[idx] == 3) and np.all(fashion.labels[idx] != 3)


def test_ubw_c_respects_epsilon_and_keeps_labels(fashion):
    data = fashion.subset(np.arange(200))
    key = _key(variant="ubw-c", iterations=3, retrain_every=2, surrogate_epochs=1, sources=50)
    release, done = ubw.watermark(data, key)
    idx = np.array(done.params["poisoned"])
    assert idx.size == 20
    np.testing.assert_array_equal(release.labels, data.labels)
    diff = release.images - data.images
    assert np.abs(diff).max() <= 16 / 255 + 1e-6
    assert np.abs(diff[idx]).max() > 0  # the perturbation is not empty
    rest = np.setdiff1d(np.arange(200), idx)
    np.testing.assert_array_equal(diff[rest], 0)
    assert release.images.min() >= 0 and release.images.max() <= 1


def _craft(data, key: Key, progress_factory):
    """UBW-C crafting of ``data`` on the CPU with ``key``'s trigger (10 classes)."""
    from tracemark.methods.ubw.clean_label import craft
    from tracemark.methods.ubw.key_trigger import make_trigger

    trigger = make_trigger(key, data.images.shape[1:])
    return craft(
        data.images, data.labels, 10, trigger, key, device="cpu", progress_factory=progress_factory
    )


class Killed(Exception):
    """Stands for the machine stopping in the middle of the crafting."""


def test_a_killed_ubw_c_crafting_resumes_where_it_stopped(fashion, tmp_path, monkeypatch):
    """Inside a progress folder, each matching iteration's state is kept, and each epoch of
    a surrogate retraining: a crafting killed in the retraining before iteration 5 of 5
    (one epoch of two done) goes on from that epoch and that iteration, and crafts
    exactly the poisons of a run never stopped; the folder is emptied."""
    from tracemark import training_resume
    from tracemark.resume_folder import keep_progress_in

    data = fashion.subset(np.arange(200))
    key = _key(variant="ubw-c", iterations=5, retrain_every=2, surrogate_epochs=2, sources=50)

    def crafted(kill_in=None, seen=None):
        def progress_factory(name, total):
            def advance(_):
                seen.append(name)
                if name == kill_in:
                    raise Killed

            return advance

        return _craft(data, key, progress_factory if seen is not None else None)

    whole = crafted()
    seen: list[str] = []
    with keep_progress_in(tmp_path), pytest.raises(Killed):
        crafted(kill_in="train surrogate (3)", seen=seen)  # the retraining at iteration 4
    assert seen.count("UBW-C gradient matching") == 4
    assert len(list(tmp_path.glob("*.pt"))) == 2  # the matching's state, the retraining's
    load, resumed_from = training_resume.EpochCheckpoint.load, []

    def spied(self):
        state = load(self)
        resumed_from.append(None if state is None else state.get("epoch", state.get("next")))
        return state

    monkeypatch.setattr(training_resume.EpochCheckpoint, "load", spied)
    seen.clear()
    with keep_progress_in(tmp_path):
        resumed = crafted(seen=seen)
    assert resumed_from == [4, 1]  # matching from iteration 4, its retraining from epoch 1
    assert seen.count("UBW-C gradient matching") == 1  # iteration 5 only
    np.testing.assert_array_equal(resumed.poisoned, whole.poisoned)
    np.testing.assert_array_equal(resumed.poisons, whole.poisons)
    assert resumed.alignment == whole.alignment and resumed.retrained_at == whole.retrained_at
    assert not list(tmp_path.iterdir())


def test_ubw_c_crafting_keeps_its_best_restart_and_matches_an_ensemble(fashion, tmp_path):
    """With 2 restarts the matching runs twice, from delta = 0 and from a random point of
    the epsilon ball, and keeps the run whose final alignment loss is lower; with 2
    surrogates each is trained from its own seed and retrained on the poisons. A crafting
    killed between the restarts, and one killed inside the second, each go on from where
    they stopped and craft exactly what a run never stopped crafts."""
    from tracemark.resume_folder import keep_progress_in

    data = fashion.subset(np.arange(100))
    key = _key(
        variant="ubw-c",
        iterations=3,
        retrain_every=2,
        surrogate_epochs=1,
        sources=30,
        surrogates=2,
        restarts=2,
    )

    def crafted(kill_at=None, seen=None):
        def progress_factory(name, total):
            seen.append(name)
            if name == kill_at:
                raise Killed
            return lambda _: None

        return _craft(data, key, progress_factory)

    seen: list[str] = []
    whole = crafted(seen=seen)
    assert len(whole.finals) == 2 and whole.finals[0] != whole.finals[1]
    assert whole.restart == int(np.argmin(whole.finals))
    assert whole.alignment[-1] == min(whole.finals) and len(whole.alignment) == 3
    assert seen == [
        "train surrogate 1 of 2 (1)",
        "train surrogate 2 of 2 (1)",
        "UBW-C gradient matching (start 1 of 2)",
        "train surrogate 1 of 2 (2)",  # the retraining at iteration 2, each member
        "train surrogate 2 of 2 (2)",
        "UBW-C gradient matching (start 2 of 2)",  # from the first surrogates again
        "train surrogate 1 of 2 (2)",
        "train surrogate 2 of 2 (2)",
    ]
    diff = whole.poisons - data.images[whole.poisoned]
    assert np.abs(diff).max() <= 16 / 255 + 1e-6 and np.abs(diff).max() > 0
    for kill_at in ("UBW-C gradient matching (start 2 of 2)", "train surrogate 2 of 2 (2)"):
        folder = tmp_path / kill_at.split()[0]
        with keep_progress_in(folder), pytest.raises(Killed):  # the second kill: in start 1
            crafted(kill_at=kill_at, seen=[])
        seen = []
        with keep_progress_in(folder):
            resumed = crafted(seen=seen)
        assert "train surrogate 1 of 2 (1)" not in seen  # the first surrogates were kept
        np.testing.assert_array_equal(resumed.poisons, whole.poisons)
        assert resumed.finals == whole.finals and resumed.restart == whole.restart
        assert not list(folder.iterdir())


# A UBW-C key file as 0.7.5 wrote it, before ``surrogates`` and ``restarts`` existed, and
# the commitment 0.7.5 computed for it.
KEY_0_7_5 = (
    '{"created": "2026-12-01T00:00:00Z", "format": "tracemark-key", "method": "ubw", '
    '"params": {"alpha": 0.2, "beta": 2.0, "epsilon": 0.06274509803921569, "gamma": 0.1, '
    '"image_shape": null, "iterations": 100, "lr": 0.025, "num_classes": null, '
    '"patch_size": null, "poisoned": [], "release_sha256": null, "retrain_every": 50, '
    '"sources": 1000, "stealth": null, "surrogate": "small-cnn", "surrogate_epochs": 8, '
    '"surrogate_width": 32, "target": 0, "trigger": "patch", "variant": "ubw-c"}, '
    '"seed": "00112233445566778899aabbccddeeff", "version": 2}'
)
COMMITMENT_0_7_5 = "8ff17661208cf0c27103200ef6e18a1590913b73a4bce06fc2fd993860782dc8"


def test_crafting_settings_added_later_leave_earlier_keys_as_they_were():
    """A key holds ``surrogates`` and ``restarts`` only where they differ from 1, so a key
    file written before they existed reads, re-saves and commits exactly as before."""
    import json

    key = Key.model_validate_json(KEY_0_7_5)
    assert key.commitment() == COMMITMENT_0_7_5
    assert json.dumps(key.model_dump(), sort_keys=True) == KEY_0_7_5
    assert key.typed_params().surrogates == 1 and key.typed_params().restarts == 1
    stronger = _key(variant="ubw-c", surrogates=4, restarts=2)
    assert stronger.params["surrogates"] == 4 and stronger.params["restarts"] == 2
    assert stronger.commitment() != _key(variant="ubw-c").commitment()
    with pytest.raises(ValidationError, match="restarts"):
        _key(variant="ubw-c", restarts=0)


def test_ubw_param_validation():
    with pytest.raises(TracemarkError, match="patch"):
        Key.generate("ubw", variant="ubw-c", trigger="corner")
    with pytest.raises(TracemarkError, match="gamma"):
        Key.generate("ubw", gamma=1.5)
    assert Key.generate("ubw", variant="blended").params["trigger"] == "blended"


# --------------------------------------------------------------------------- metrics


def test_prediction_dispersibility_on_known_histograms():
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    pred = np.array([0, 1, 3, 3, 3, 3, 3, 3])
    # class 0: two predictions, two classes -> ln 2; class 1: all the same -> 0
    assert prediction_dispersibility(pred, y, 10) == pytest.approx(2 * math.log(2) / 8)
    y = np.repeat(np.arange(10), 10)
    assert prediction_dispersibility(np.tile(np.arange(10), 10), y, 10) == pytest.approx(
        math.log(10)
    )
    assert prediction_dispersibility(np.zeros(100, int), y, 10) == 0


def test_sample_and_class_dispersibility_and_lemma_1():
    k = 10
    assert sample_dispersibility(np.full((5, k), 1 / k)) == pytest.approx(math.log(k))
    one_hot = np.eye(k)[[0, 1, 0, 1]]
    assert sample_dispersibility(one_hot) == pytest.approx(0)
    assert class_dispersibility(one_hot, np.zeros(4, int)) == pytest.approx(math.log(2))
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 60))
        probs = rng.dirichlet(np.full(k, rng.uniform(0.05, 5)), size=n)
        labels = rng.integers(0, 3, size=n)
        assert sample_dispersibility(probs) <= class_dispersibility(probs, labels) + 1e-12
    same = np.tile(rng.dirichlet(np.ones(k)), (7, 1))  # equality iff all outputs are equal
    assert sample_dispersibility(same) == pytest.approx(
        class_dispersibility(same, np.zeros(7, int))
    )


def test_attack_success_rates_by_hand():
    y = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 0, 3])  # image 2 is misclassified when clean
    trig = np.array([5, 1, 0, 4])  # images 0 and 3 flip (2 stays wrong)
    asr_a, asr_c = attack_success(trig, y, clean)
    assert asr_a == pytest.approx(3 / 4) and asr_c == pytest.approx(2 / 3)
    m = watermark_metrics(np.eye(10)[clean], np.eye(10)[trig], y, target=3)
    # target 3: image 3 is left out; images 0 and 2 are wrong under the trigger
    assert m["ASR-A"] == pytest.approx(2 / 3) and m["target_rate"] == 0 and m["BA"] == 0.75


# --------------------------------------------------------------------------- tests


def test_margin_paired_ttest_matches_hand_computation():
    p_b = np.array([0.9, 0.8, 0.95, 0.85])
    p_p = np.array([0.2, 0.3, 0.1, 0.4])
    # d = P_b - P_p - 0.25 = [0.45, 0.25, 0.6, 0.2]: mean 0.375, sd sqrt(0.1025 / 3)
    t_hand = 0.375 / (math.sqrt(0.1025 / 3) / 2)
    # Student t with 3 degrees of freedom has a closed-form CDF.
    cdf = (
        0.5
        + (t_hand / (math.sqrt(3) * (1 + t_hand**2 / 3)) + math.atan(t_hand / math.sqrt(3)))
        / math.pi
    )
    p, t, delta_p = margin_paired_ttest(p_b, p_p, 0.25)
    assert t == pytest.approx(t_hand, rel=1e-9) and t_hand == pytest.approx(4.0575, abs=1e-4)
    assert p == pytest.approx(1 - cdf, rel=1e-6)
    assert delta_p == pytest.approx(0.625)
    # Below the margin the test does not reject: a drop of 0.2 < tau.
    assert margin_paired_ttest(p_b, p_b - 0.2 + 0.01 * np.arange(4), 0.25)[0] > 0.5
    assert margin_paired_ttest(np.ones(5), np.zeros(5), 0.25)[0] == 0.0  # identical gaps
    with pytest.raises(TracemarkError):
        margin_paired_ttest(p_b, p_p[:3])


def test_margin_flip_test_is_valid_and_has_power():
    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(300):  # on the null boundary q_T = q_C + tau
        control = rng.random(100) < 0.2
        flips = rng.random(100) < 0.45
        rejections += margin_flip_test(flips, control, 0.25)[0] <= 0.05
    assert rejections / 300 <= 0.05
    flips = np.arange(100) < 86
    control = np.arange(100) < 30
    assert margin_flip_test(flips, control)[0] < 0.01
    assert margin_flip_test(np.arange(100) < 23, np.arange(100) < 15)[0] == 1.0


def test_calibration_size_reaches_alpha():
    assert ubw.calibration_size(0.01) == 99 and ubw.calibration_size(0.05) == 19
    for alpha in (0.001, 0.01, 0.03, 0.05, 0.2):
        j = ubw.calibration_size(alpha)
        assert 1 / (j + 1) <= alpha < 1 / j
